-- Data quality (issue 26): every check of each source's batch in each run, and the run's verdict on the batch.
-- quality_runs: one row per source per run that reached the gate: its score (0-100, README "Data quality"),
-- the measures the anomaly detector compares with later runs, and what became of the batch: published, held
-- (nothing of it reached normalized_data), released (a person published the held batch: who and when), or
-- superseded (a later run's batch of the source reached the gate first: its fetch replaces the held one).
create table if not exists quality_runs (
    run_id text not null,
    source text collate "C" not null,
    status text not null check (status in ('published', 'held', 'released', 'superseded')),
    score integer not null check (score between 0 and 100),
    measures jsonb not null,
    -- the source's catalog entry when held (no credential: connections are named, not held), for its release
    source_entry jsonb,
    recorded_at timestamptz not null default now(),
    released_by text,
    released_at timestamptz,
    superseded_by text,
    primary key (run_id, source)
);
-- the detector's history and /sources' latest score: a source's newest runs first
create index if not exists quality_runs_source_idx on quality_runs (source, recorded_at desc);

-- quality_results: each check (declared, or an anomaly of a measure) with its measured value, threshold,
-- severity and verdict (no_history: the anomaly detector had fewer runs than it needs)
create table if not exists quality_results (
    run_id text not null,
    source text collate "C" not null,
    check_name text not null,
    kind text not null check (kind in ('check', 'anomaly')),
    severity text not null check (severity in ('warn', 'error')),
    measured double precision,
    threshold text not null,
    verdict text not null check (verdict in ('pass', 'fail', 'no_history')),
    detail text not null default '',
    primary key (run_id, source, check_name)
);

-- read as the other per-source bookkeeping is (migration 018): only the sources in scope
do $$
declare
    tab text;
begin
    foreach tab in array array['quality_runs', 'quality_results'] loop
        execute format('alter table %I enable row level security', tab);
        execute format('drop policy if exists sluice_scope on %I', tab);
        execute format('create policy sluice_scope on %I for select using '
                       '((select sluice_scope_all()) or source = any ((select sluice_scope_sources())::text[]))', tab);
    end loop;
end
$$;
