// A client of durable's SQL protocol in JavaScript, with node-postgres and nothing of durable's:
// every call is one `select durable.fn(...)`, as from Python. It spawns a task, claims it as a
// worker would, records a step, completes it and reads the result; shows the fencing of a write
// by a run that lost its lease (SQLSTATE DU001); and spawns a task for a Python worker.
//
//     npm ci && DURABLE_DSN=postgresql://... node client.mjs
//
// The database must be migrated first (`durable migrate`, or any durable app that connected).
import pg from "pg";

const client = new pg.Client({ connectionString: process.env.DURABLE_DSN });
await client.connect();

// --8<-- [start:spawn]
const spawned = await client.query(
  "select * from durable.spawn($1, $2, $3, $4)",
  ["polyglot", "greet", { name: "ada" }, { idempotency_key: "greet-ada", max_attempts: 3 }],
);
const { task_id: taskId, created } = spawned.rows[0];
// --8<-- [end:spawn]
console.log(`spawned ${taskId} created=${created}`);

// --8<-- [start:claim]
// claim up to 10 runs of the queue, under a 60 s lease (reaping lapsed leases first)
const claimed = await client.query("select * from durable.claim($1, $2, $3, $4)", [
  "polyglot", "node-worker-1", 60, 10,
]);
for (const run of claimed.rows) {
  // a step: replay its recorded value if an earlier attempt checkpointed it, else run it
  const steps = await client.query("select * from durable.get_checkpoints($1, $2)", [
    "polyglot", run.task_id,
  ]);
  let greeting = steps.rows.find((s) => s.step_name === "greeting")?.value;
  if (greeting === undefined) {
    greeting = `hello, ${run.params.name}`;
    await client.query("select durable.set_checkpoint($1, $2, $3, $4)", [
      "polyglot", run.run_id, "greeting", JSON.stringify(greeting),
    ]);
  }
  await client.query("select durable.complete($1, $2, $3)", [
    "polyglot", run.run_id, JSON.stringify({ greeting, by: "node" }),
  ]);
  console.log(`completed ${run.task_name} attempt ${run.attempt}: ${greeting}`);
}
// --8<-- [end:claim]

// --8<-- [start:result]
const outcome = await client.query("select * from durable.get_result($1, $2)", [
  "polyglot", taskId,
]);
console.log("result:", outcome.rows[0].state, JSON.stringify(outcome.rows[0].result));
// --8<-- [end:result]

// --8<-- [start:fencing]
// the run ended: any write it makes now is refused, and nothing is written
try {
  await client.query("select durable.complete($1, $2, $3)", [
    "polyglot", claimed.rows[0].run_id, JSON.stringify("late"),
  ]);
} catch (err) {
  console.log(`late write refused: SQLSTATE ${err.code}`); // DU001: the lease is lost
}
// --8<-- [end:fencing]

// a task for the Python side: its worker runs "python_side" on queue "polyglot_py"
const forPython = await client.query("select * from durable.spawn($1, $2, $3, $4)", [
  "polyglot_py", "python_side", { from: "node" }, {},
]);
console.log(`spawned for python ${forPython.rows[0].task_id}`);
await client.end();
