-- Which runs hold rows in the work tables (staged_records, normalized_stage), per source: store_raw registers
-- its source in the transaction that copies the rows, record_run removes the rows of the sources that loaded
-- with their entries. Step results used to say this, but they now outlive their run's record: a task of a
-- finished run that is cleared in the UI finds what its run committed instead of counting it twice.
create table if not exists etl_run_work (
    run_id text not null,
    source text collate "C" not null,
    created_at timestamptz not null default now(),
    primary key (run_id, source)
);
create index if not exists etl_run_work_created_idx on etl_run_work (created_at);
-- the runs at work when this migration ran: each one's stored sources have work rows
insert into etl_run_work (run_id, source, created_at)
select run_id, source, min(created_at) from etl_step_results where step = 'store_raw' group by run_id, source
on conflict do nothing;
