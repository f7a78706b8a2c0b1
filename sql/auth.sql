-- Named queries of the read API's authentication (webapp/api_keys.py, webapp/keys_cli.py): API keys, stored as
-- the SHA-256 of the key (sql/migrations/017_api_keys.sql).

-- name: api_key_by_hash
-- the API, read-only: the key a bearer token hashes to, whatever its state (a revoked or expired key is refused
-- with its own reason in the audit trail)
select name, sources, operations, expires_at, revoked_at, expires_at <= now() as expired
from api_keys where key_hash = %(key_hash)s;

-- name: api_key_touch
-- the API, in autocommit mode: a read-write transaction of its own (its sessions default to read-only), in which
-- only the SECURITY DEFINER function may write api_keys
start transaction read write;
select sluice_touch_api_key(%(key_hash)s);
commit;

-- name: api_key_create
-- the CLI, as the owner; lifetime null: it never expires
insert into api_keys (name, key_hash, sources, operations, expires_at, created_by)
values (%(name)s, %(key_hash)s, %(sources)s, %(operations)s, now() + %(lifetime)s::interval, %(created_by)s)
returning name, created_at, expires_at;

-- name: api_keys_list
select name, sources, operations, expires_at, created_at, created_by, last_used_at, revoked_at, revoked_by
from api_keys order by name;

-- name: api_key_revoke
-- revoking twice keeps the first time and who did it
update api_keys set revoked_at = now(), revoked_by = %(revoked_by)s
where name = %(name)s and revoked_at is null
returning name, revoked_at;

-- name: api_key_exists
select exists (select 1 from api_keys where name = %(name)s) as found;
