/// The PostgreSQL schema (`relay_` tables) and its migrations, run by `relay serve` and the commands at start.
import PostgresNIO
import Registry

extension PostgresStore {
    /// Each step once, in order; `relay_schema` says how far a database is.
    static let migrations: [(name: String, sql: [String])] = [
        (
            "v1: registry, audit log, nonces",
            [
                """
                CREATE TABLE relay_device (
                    id text PRIMARY KEY,
                    secret text NOT NULL,
                    previous_secret text,
                    label text NOT NULL DEFAULT '',
                    revoked_at double precision,
                    created_at double precision NOT NULL,
                    last_seen_at double precision
                )
                """,
                """
                CREATE TABLE relay_device_owner (
                    device_id text NOT NULL REFERENCES relay_device(id) ON DELETE CASCADE,
                    user_id text NOT NULL,
                    PRIMARY KEY (device_id, user_id)
                )
                """,
                "CREATE INDEX relay_device_owner_by_user ON relay_device_owner (user_id)",
                """
                CREATE TABLE relay_session_audit (
                    session_id text PRIMARY KEY,
                    user_id text NOT NULL,
                    device_id text NOT NULL,
                    created_at double precision NOT NULL,
                    answered_at double precision,
                    closed_at double precision,
                    close_reason text,
                    closed_by text
                )
                """,
                "CREATE INDEX relay_session_audit_by_device ON relay_session_audit (device_id, created_at)",
                "CREATE INDEX relay_session_audit_by_user ON relay_session_audit (user_id, created_at)",
                """
                CREATE TABLE relay_nonce (
                    device_id text NOT NULL,
                    nonce text NOT NULL,
                    expires_at bigint NOT NULL,
                    PRIMARY KEY (device_id, nonce)
                )
                """,
                "CREATE INDEX relay_nonce_by_expiry ON relay_nonce (expires_at)",
            ]
        ),
        (
            "v2: live links, kept messages, open sessions",
            [
                // Links and sessions survive a crash of PostgreSQL; kept messages (UNLOGGED, no
                // WAL per row) only a crash of a relay: after a PostgreSQL crash resumes answer
                // resumed:false (contract §11).
                """
                CREATE TABLE relay_link (
                    link_id text PRIMARY KEY,
                    token_hash bytea NOT NULL,
                    party text NOT NULL,
                    principal text NOT NULL,
                    owner_node text,
                    owner_epoch bigint NOT NULL DEFAULT 0,
                    token_valid_until double precision,
                    token_expires_at double precision,
                    token_devices text[],
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE INDEX relay_link_by_owner ON relay_link (owner_node)",
                """
                CREATE UNLOGGED TABLE relay_outbox (
                    link_id text NOT NULL,
                    seq bigint NOT NULL,
                    body text NOT NULL,
                    PRIMARY KEY (link_id, seq)
                )
                """,
                """
                CREATE TABLE relay_session (
                    session_id text PRIMARY KEY,
                    app_link text NOT NULL,
                    device_link text NOT NULL,
                    user_id text NOT NULL,
                    device_id text NOT NULL,
                    created_at double precision NOT NULL,
                    answered boolean NOT NULL,
                    ttl_seconds integer NOT NULL,
                    setup_deadline double precision,
                    refresh_at double precision,
                    credentials text[] NOT NULL,
                    credential_expiries double precision[] NOT NULL
                )
                """,
            ]
        ),
        (
            "v3: nodes of a fleet, device links claimed fleet-wide, messages between nodes",
            [
                // One row per node process: alive while it holds its advisory lock and beats.
                """
                CREATE TABLE relay_node (
                    node_id text PRIMARY KEY,
                    address text NOT NULL,
                    state text NOT NULL,
                    lock_key bigint NOT NULL,
                    started_at timestamptz NOT NULL DEFAULT now(),
                    heartbeat_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "ALTER TABLE relay_link ADD COLUMN attached boolean NOT NULL DEFAULT false",
                // Contract §4's replace rule, fleet-wide: one live link per device.
                """
                DELETE FROM relay_link a USING relay_link b
                WHERE a.party = 'device' AND b.party = 'device' AND a.principal = b.principal AND a.updated_at < b.updated_at
                """,
                "CREATE UNIQUE INDEX relay_link_one_per_device ON relay_link (principal) WHERE party = 'device'",
                // A resume on any node finds its link by the token's hash.
                "CREATE INDEX relay_link_by_token ON relay_link (token_hash)",
                // A reservation writes a session's row before the device's node fills it in.
                "ALTER TABLE relay_session ALTER COLUMN answered SET DEFAULT false",
                "ALTER TABLE relay_session ALTER COLUMN ttl_seconds SET DEFAULT 0",
                "ALTER TABLE relay_session ALTER COLUMN credentials SET DEFAULT '{}'",
                "ALTER TABLE relay_session ALTER COLUMN credential_expiries SET DEFAULT '{}'",
                // Presence fleet-wide: what a device said of itself, and which sessions opened.
                "ALTER TABLE relay_link ADD COLUMN capabilities text",
                "ALTER TABLE relay_session ADD COLUMN opened boolean NOT NULL DEFAULT false",
                "CREATE INDEX relay_session_by_app_link ON relay_session (app_link)",
                "CREATE INDEX relay_session_by_device_link ON relay_session (device_link)",
                // Messages for links another node serves: addressed when written to the node
                // serving the link then, taken by it in seq order (UNLOGGED, as kept messages).
                """
                CREATE UNLOGGED TABLE relay_inbox (
                    seq bigserial PRIMARY KEY,
                    node_id text NOT NULL,
                    link_id text NOT NULL,
                    type text NOT NULL,
                    body text NOT NULL,
                    event text
                )
                """,
                "CREATE INDEX relay_inbox_by_node ON relay_inbox (node_id, seq)",
            ]
        ),
        (
            "v4: per-user limits fleet-wide",
            [
                // Token buckets any node takes from in one statement (UNLOGGED: a crash of the
                // database refills them, which is fine).
                """
                CREATE UNLOGGED TABLE relay_quota (
                    key text PRIMARY KEY,
                    tokens double precision NOT NULL,
                    allowed boolean NOT NULL,
                    updated_at timestamptz NOT NULL
                )
                """
            ]
        ),
        (
            "v5: reliable sending",
            [
                // The highest `cseq` of a link's client whose message is done (contract §11):
                // written behind every few milliseconds for every link that sends, so not in
                // relay_link (whose rows every message between nodes reads FOR SHARE), and
                // UNLOGGED as the kept messages it goes with.
                "CREATE UNLOGGED TABLE relay_cseq (link_id text PRIMARY KEY, cseq bigint NOT NULL)",
                // A link taken over and not resumed since: the highest seq the store knew then.
                "ALTER TABLE relay_link ADD COLUMN restored_through bigint",
                // A message read from the inbox stays until the live state holding what it caused
                // is written (in the same transaction): a node killed in between leaves it to its
                // taker instead of losing it.
                "ALTER TABLE relay_inbox ADD COLUMN taken boolean NOT NULL DEFAULT false",
                "ALTER TABLE relay_inbox ADD COLUMN taken_at timestamptz",
                "DROP INDEX relay_inbox_by_node",
                "CREATE INDEX relay_inbox_waiting ON relay_inbox (node_id, seq) WHERE NOT taken",
            ]
        ),
        (
            "v6: audit times in integer milliseconds",
            [
                """
                ALTER TABLE relay_session_audit
                    ALTER COLUMN created_at TYPE bigint USING round(created_at * 1000)::bigint,
                    ALTER COLUMN answered_at TYPE bigint USING round(answered_at * 1000)::bigint,
                    ALTER COLUMN closed_at TYPE bigint USING round(closed_at * 1000)::bigint
                """,
                "ALTER TABLE relay_session_audit RENAME COLUMN created_at TO created_at_ms",
                "ALTER TABLE relay_session_audit RENAME COLUMN answered_at TO answered_at_ms",
                "ALTER TABLE relay_session_audit RENAME COLUMN closed_at TO closed_at_ms",
                // Retention deletes and the unfiltered listing go by time alone.
                "CREATE INDEX relay_session_audit_by_time ON relay_session_audit (created_at_ms)",
            ]
        ),
        (
            "v7: control leases and e-stops (contract §12)",
            [
                // One row per device ever driven, logged (not UNLOGGED): its epoch must never go
                // back, not even after a crash of PostgreSQL.
                "CREATE TABLE relay_control (device_id text PRIMARY KEY, record text NOT NULL)"
            ]
        ),
    ]

    /// Brings the database's schema up to date. Nodes starting together take turns (an
    /// advisory lock held by the migrating transaction).
    public func migrate() async throws(StoreError) {
        try await migrate(through: Self.migrations.count)
    }

    /// Applies the migrations up to `version` (tests stop early to make an older database).
    func migrate(through version: Int) async throws(StoreError) {
        // Once per start, and nodes starting together wait for each other: a longer bound.
        try await transaction("migrating the schema", within: .seconds(60)) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: self.logger)
            try await connection.query("CREATE TABLE IF NOT EXISTS relay_schema (version integer NOT NULL, name text NOT NULL)", logger: self.logger)
            var applied = 0
            for try await version in try await connection.query("SELECT coalesce(max(version), 0) FROM relay_schema", logger: self.logger)
                .decode(Int.self)
            {
                applied = version
            }
            for (index, migration) in Self.migrations.enumerated() where index + 1 > applied && index + 1 <= version {
                for statement in migration.sql {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                }
                try await connection.query("INSERT INTO relay_schema (version, name) VALUES (\(index + 1), \(migration.name))", logger: self.logger)
            }
        }
    }

    /// The advisory lock key of migrations (any constant no other lock uses).
    static let migrationLock: Int64 = 0x7265_6C61_7900_0001
}
