/// The live links, their kept messages and the open sessions on PostgreSQL: what a restarted relay takes over.
import Foundation
import PostgresNIO
import Registry

extension PostgresStore: LiveStateStore {
    /// Writes batches of changes in one transaction. Rows of kept messages go in arrays
    /// (`unnest`), never a statement per message; the commit does not wait for the WAL flush
    /// (`synchronous_commit = off`): losing the last fraction of a second of this in a crash of
    /// PostgreSQL itself is within contract §11.
    public func save(_ batches: [LiveStateBatch]) async throws(StoreError) {
        guard !isFenced else { throw StoreError.unusable("another relay serves the database at \(location): this one writes nothing more") }
        let node = node
        try await transaction("writing the live state") { connection in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            let snapshotAt = batches.lastIndex { $0.snapshot != nil }
            for (index, batch) in batches.enumerated() {
                if let snapshotAt, index < snapshotAt {
                    // The snapshot holds what this batch's messages did; its rows and ends still count.
                    var rest = batch
                    rest.messages = []
                    rest.forgotten = []
                    try await self.write(rest, node: node, on: connection)
                } else {
                    try await self.write(batch, node: node, on: connection)
                }
            }
        }
    }

    private func write(_ batch: LiveStateBatch, node: String, on connection: PostgresConnection) async throws {
        for link in batch.links {
            let hash = Data(link.tokenHash)
            try await connection.query(
                """
                INSERT INTO relay_link (link_id, token_hash, party, principal, owner_node, token_valid_until, token_expires_at, token_devices)
                VALUES (\(link.id), \(hash), \(link.party), \(link.principal), \(node), \(link.tokenValidUntil), \(link.tokenExpiresAt), \(link.tokenDevices))
                ON CONFLICT (link_id) DO UPDATE SET token_valid_until = excluded.token_valid_until,
                    token_expires_at = excluded.token_expires_at, token_devices = excluded.token_devices, updated_at = now()
                """,
                logger: logger
            )
        }
        if let snapshot = batch.snapshot {
            try await connection.query(
                "DELETE FROM relay_outbox WHERE link_id IN (SELECT link_id FROM relay_link WHERE owner_node = \(node))",
                logger: logger
            )
            try await insert(snapshot.flatMap { linkID, messages in messages.map { (linkID, $0) } }, on: connection)
        }
        if !batch.forgotten.isEmpty {
            let links = batch.forgotten.map(\.linkID)
            let from = batch.forgotten.map { Int64($0.from) }
            let before = batch.forgotten.map { Int64(clamping: $0.before) }
            try await connection.query(
                """
                DELETE FROM relay_outbox o USING unnest(\(links)::text[], \(from)::bigint[], \(before)::bigint[]) AS f(link_id, low, high)
                WHERE o.link_id = f.link_id AND o.seq >= f.low AND o.seq < f.high
                """,
                logger: logger
            )
        }
        if batch.snapshot == nil { try await insert(batch.messages, on: connection) }
        if !batch.endedLinks.isEmpty {
            try await connection.query("DELETE FROM relay_outbox WHERE link_id = ANY(\(batch.endedLinks))", logger: logger)
            try await connection.query("DELETE FROM relay_link WHERE link_id = ANY(\(batch.endedLinks))", logger: logger)
        }
        for session in batch.sessions {
            let documents = session.credentials.map(\.document)
            let expiries = session.credentials.map(\.expiresAt)
            try await connection.query(
                """
                INSERT INTO relay_session (session_id, app_link, device_link, user_id, device_id, created_at, answered, ttl_seconds,
                    setup_deadline, refresh_at, credentials, credential_expiries)
                VALUES (\(session.id), \(session.appLink), \(session.deviceLink), \(session.userID), \(session.deviceID), \(session.createdAt),
                    \(session.answered), \(session.ttlSeconds), \(session.setupDeadline), \(session.refreshAt), \(documents), \(expiries))
                ON CONFLICT (session_id) DO UPDATE SET answered = excluded.answered, setup_deadline = excluded.setup_deadline,
                    refresh_at = excluded.refresh_at, credentials = excluded.credentials, credential_expiries = excluded.credential_expiries
                """,
                logger: logger
            )
        }
        if !batch.endedSessions.isEmpty {
            try await connection.query("DELETE FROM relay_session WHERE session_id = ANY(\(batch.endedSessions))", logger: logger)
        }
    }

    private func insert(_ messages: [(linkID: String, message: StoredMessage)], on connection: PostgresConnection) async throws {
        guard !messages.isEmpty else { return }
        let links = messages.map(\.linkID)
        let seqs = messages.map { Int64($0.message.seq) }
        let bodies = messages.map(\.message.text)
        try await connection.query(
            """
            INSERT INTO relay_outbox (link_id, seq, body) SELECT * FROM unnest(\(links)::text[], \(seqs)::bigint[], \(bodies)::text[])
            ON CONFLICT (link_id, seq) DO UPDATE SET body = excluded.body
            """,
            logger: logger
        )
    }

    /// Takes over every link and session in the database (one node serves it: `relay serve`
    /// holds the database's node lock) and returns them.
    public func liveState() async throws(StoreError) -> StoredLiveState {
        let node = node
        return try await transaction("reading the live state") { connection in
            try await connection.query("UPDATE relay_link SET owner_node = \(node), owner_epoch = owner_epoch + 1", logger: self.logger)
            var links: [StoredLink] = []
            let linkRows = try await connection.query(
                "SELECT link_id, token_hash, party, principal, token_valid_until, token_expires_at, token_devices FROM relay_link",
                logger: self.logger
            )
            for try await (id, hash, party, principal, validUntil, expiresAt, devices) in linkRows.decode(
                (String, Data, String, String, Double?, Double?, [String]?).self
            ) {
                links.append(
                    StoredLink(
                        id: id,
                        tokenHash: [UInt8](hash),
                        party: party,
                        principal: principal,
                        tokenValidUntil: validUntil,
                        tokenExpiresAt: expiresAt,
                        tokenDevices: devices
                    )
                )
            }
            var messages: [String: [StoredMessage]] = [:]
            for try await (link, seq, body) in try await connection.query("SELECT link_id, seq, body FROM relay_outbox ORDER BY link_id, seq", logger: self.logger)
                .decode((String, Int, String).self)
            {
                messages[link, default: []].append(StoredMessage(seq: seq, text: body))
            }
            var sessions: [StoredSession] = []
            let sessionRows = try await connection.query(
                """
                SELECT session_id, app_link, device_link, user_id, device_id, created_at, answered, ttl_seconds, setup_deadline, refresh_at,
                    credentials, credential_expiries FROM relay_session
                """,
                logger: self.logger
            )
            for try await row in sessionRows {
                let (id, app, device, user, deviceID, created, answered, ttl, setup, refresh, documents, expiries) = try row.decode(
                    (String, String, String, String, String, Double, Bool, Int, Double?, Double?, [String], [Double]).self
                )
                sessions.append(
                    StoredSession(
                        id: id,
                        appLink: app,
                        deviceLink: device,
                        userID: user,
                        deviceID: deviceID,
                        createdAt: created,
                        answered: answered,
                        ttlSeconds: ttl,
                        setupDeadline: setup,
                        refreshAt: refresh,
                        credentials: zip(documents, expiries).map { StoredSession.Credential(document: $0, expiresAt: $1) }
                    )
                )
            }
            return StoredLiveState(links: links, messages: messages, sessions: sessions)
        }
    }

    public func closeSessionsLeftOpen() async throws(StoreError) -> Int {
        try await call("auditing sessions left open") {
            try await self.client.query(
                """
                UPDATE relay_session_audit SET close_reason = 'relay_stopped', closed_by = 'relay'
                WHERE close_reason IS NULL AND session_id NOT IN (SELECT session_id FROM relay_session) RETURNING session_id
                """,
                logger: self.logger
            ).collect().count
        }
    }

    /// A snapshot reclaims nothing here: acked messages are deleted as they go.
    public var outboxLogBytes: Int { 0 }
}
