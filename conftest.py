"""pytest loads this conftest first and puts the repository root on sys.path (its rootdir handling), so the
tests import their helpers as `tests.<module>` however pytest is started. Sluice itself is imported from
the installed distribution (`make install`): plugins/ is on no path."""
