-- Reserved for another change (numbered ahead of 0023_history.sql); replaced by it when the
-- branches merge.
select 1;
