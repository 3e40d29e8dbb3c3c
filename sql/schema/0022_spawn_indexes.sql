-- A spawn writes one index entry less (issue 17): the tags' index holds only the tasks that have
-- tags. Its readers, the task browser's tag filter (durable.list_tasks) and cancel_by, match the
-- tasks that carry the tags asked for, never a task without tags, and say so (tags <> '{}') so
-- the planner can use this partial index. Before, every spawn without tags (most of them) put
-- its empty array in the GIN index's pending list: WAL for the list page and the meta page, and
-- now and then a spawn that paid for merging the list into the index.
drop index durable.tasks_browse_tags;
create index tasks_browse_tags on durable.tasks using gin (tags) where tags <> '{}';
