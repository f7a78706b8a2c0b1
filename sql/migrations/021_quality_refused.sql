-- A batch the delete guard refused (issue 26): recorded with the quality gate's results, its check `deletes`
-- showing the share of live rows the read would delete against the guard's limit, so /runs/<id>/quality and
-- /sources show both ways of holding a batch back in one place. refused: nothing of it reached normalized_data
-- and no release publishes it; a run with accept_deletes takes the drop (README "Data quality").
alter table quality_runs drop constraint if exists quality_runs_status_check;
alter table quality_runs add constraint quality_runs_status_check
    check (status in ('published', 'held', 'released', 'superseded', 'refused'));
