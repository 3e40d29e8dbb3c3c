-- 0013: a task that ends leaves the queue's task index instead of adding an entry to it.
--
-- tasks_queue_state indexed every task by (queue, state), so completing a task (a non-HOT
-- update) added an entry for its new state: one more index insertion on the hot path of every
-- task, for entries no query reads. Its one reader looks up pending tasks (cancel_by), which a
-- partial index of pending tasks by queue serves, and ended tasks never enter. Measured with
-- claim(100) + complete_runs(100) in turn over 20,000 tasks: complete_runs 60.5 -> 54.5 us per
-- task (median of 5).
create index tasks_pending on durable.tasks (queue) where state = 'pending';
drop index durable.tasks_queue_state;
