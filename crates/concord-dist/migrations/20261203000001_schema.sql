-- The archive of the distributed mode (docs/distributed.md, "PostgreSQL schema").
-- K = 8 shards: events are LIST-partitioned by shard = partition mod K. Growing K: see
-- docs/distributed.md ("Growing K").

CREATE TABLE cluster (
    id          smallint PRIMARY KEY CHECK (id = 1),
    partitions  integer,            -- P, set by the first worker (NULL until then)
    shards      integer NOT NULL,   -- K
    created_ms  bigint NOT NULL
);
INSERT INTO cluster (id, partitions, shards, created_ms)
VALUES (1, NULL, 8, (extract(epoch FROM now()) * 1000)::bigint);

CREATE TABLE rooms (
    room        text PRIMARY KEY,
    kind        text NOT NULL,
    epoch       text NOT NULL,
    partition   integer NOT NULL,
    created_ms  bigint NOT NULL
);

CREATE TABLE events (
    shard        smallint NOT NULL,
    room         text NOT NULL,
    seq          bigint NOT NULL,
    epoch        text NOT NULL,
    hlc          text NOT NULL,
    from_client  text NOT NULL,
    op_id        text,
    data         text NOT NULL,     -- not jsonb: jsonb refuses \u0000, which the protocol accepts
    PRIMARY KEY (shard, room, seq)  -- serves reads by room, after, limit
) PARTITION BY LIST (shard);

-- The op key lookup (find_ops). Not unique: the archive records what Redis committed, and a
-- resend the client did not flag, past the idempotency window, is a new event with an old key.
CREATE INDEX events_op_key ON events (shard, room, from_client, op_id) WHERE op_id IS NOT NULL;

CREATE TABLE events_0 PARTITION OF events FOR VALUES IN (0);
CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2);
CREATE TABLE events_3 PARTITION OF events FOR VALUES IN (3);
CREATE TABLE events_4 PARTITION OF events FOR VALUES IN (4);
CREATE TABLE events_5 PARTITION OF events FOR VALUES IN (5);
CREATE TABLE events_6 PARTITION OF events FOR VALUES IN (6);
CREATE TABLE events_7 PARTITION OF events FOR VALUES IN (7);

CREATE TABLE watermarks (
    room   text PRIMARY KEY,
    epoch  text NOT NULL,
    seq    bigint NOT NULL          -- only moves forward (GREATEST)
);

CREATE TABLE snapshots (
    room   text NOT NULL,
    seq    bigint NOT NULL,
    state  text NOT NULL,
    PRIMARY KEY (room, seq)
);

CREATE TABLE clients (
    client_id  text PRIMARY KEY,
    user_id    text NOT NULL        -- write-once
);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    partition   integer NOT NULL,
    entry_id    text NOT NULL,
    fields      text NOT NULL,      -- the entry's fields as a JSON object (bytes as lossy UTF-8)
    error       text NOT NULL,
    deliveries  integer NOT NULL,
    at_ms       bigint NOT NULL,
    UNIQUE (partition, entry_id)
);
