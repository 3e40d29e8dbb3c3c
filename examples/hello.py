import anyio

from durable import Durable, TaskContext

app = Durable()  # Durable(dsn) > $DURABLE_DSN > an embedded PostgreSQL under ./.durable


async def fetch_price(sku: str) -> int:
    return 42  # your I/O here: a step's result is checkpointed and never computed again


@app.task(name="quote", max_attempts=5)
async def quote(ctx: TaskContext, params: dict[str, str]) -> dict[str, int]:
    price = await ctx.step("price", fetch_price, params["sku"])
    return {"price": price}


async def main() -> None:
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(app.run_worker)  # or elsewhere: durable worker hello:app
        handle = await quote.spawn({"sku": "mug"}, idempotency_key="quote-mug")
        print((await handle.result(timeout=30)).result)  # {'price': 42}
        worker.drain()


anyio.run(main)
