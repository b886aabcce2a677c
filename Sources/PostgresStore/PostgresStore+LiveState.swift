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
        try ensureNotFenced()
        let node = node
        let changed = try await transaction("writing the live state") { connection -> Set<String> in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            try await self.ensureServing(on: connection)
            var changed = Set<String>()
            let snapshotAt = batches.lastIndex { $0.snapshot != nil }
            for (index, batch) in batches.enumerated() {
                if let snapshotAt, index < snapshotAt {
                    // The snapshot holds what this batch's messages did; its rows and ends still count.
                    var rest = batch
                    rest.messages = []
                    rest.forgotten = []
                    changed.formUnion(try await self.write(rest, node: node, on: connection))
                } else {
                    changed.formUnion(try await self.write(batch, node: node, on: connection))
                }
            }
            // The inbox's messages whose effects these batches hold.
            let done = batches.flatMap(\.inboxDone)
            if !done.isEmpty {
                try await connection.query("DELETE FROM relay_inbox WHERE seq = ANY(\(done)) AND node_id = \(node)", logger: self.logger)
            }
            // Contract §11: the links' `cseq` marks, the highest of every batch, in one statement.
            var marks: [String: Int] = [:]
            for batch in batches {
                for (linkID, cseq) in batch.marks { marks[linkID] = max(marks[linkID] ?? 0, cseq) }
            }
            try await self.record(marks: marks, on: connection)
            return changed
        }
        await announce(changed)
    }

    /// Tells every node that these devices' presence may have changed (after the commit that
    /// changed it, in a statement of its own).
    func announce(_ devices: Set<String>) async {
        guard !devices.isEmpty else { return }
        let ids = Array(devices)
        _ = try? await call("announcing presence") {
            try await self.client.query("SELECT pg_notify('relay_fleet', d) FROM unnest(\(ids)::text[]) AS d", logger: self.logger).collect()
        }
    }

    /// Writes one batch; the devices whose presence it may change.
    private func write(_ batch: LiveStateBatch, node: String, on connection: PostgresConnection) async throws -> Set<String> {
        var changed = Set(batch.links.filter { $0.party == "device" }.map(\.principal))
        changed.formUnion(batch.sessions.map(\.deviceID))
        for link in batch.links {
            try await upsert(link, node: node, on: connection)
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
                DELETE FROM relay_outbox o USING unnest(\(links)::text[], \(from)::bigint[], \(before)::bigint[]) AS f(link_id, low, high), relay_link l
                WHERE o.link_id = f.link_id AND o.seq >= f.low AND o.seq < f.high AND l.link_id = f.link_id AND l.owner_node = \(node)
                """,
                logger: logger
            )
        }
        if batch.snapshot == nil { try await insert(batch.messages, on: connection) }
        if !batch.endedLinks.isEmpty {
            try await connection.query(
                "DELETE FROM relay_outbox WHERE link_id IN (SELECT link_id FROM relay_link WHERE link_id = ANY(\(batch.endedLinks)) AND owner_node = \(node))",
                logger: logger
            )
            for try await (party, principal) in try await connection.query(
                "DELETE FROM relay_link WHERE link_id = ANY(\(batch.endedLinks)) AND owner_node = \(node) RETURNING party, principal",
                logger: logger
            ).decode((String, String).self) where party == "device" {
                changed.insert(principal)
            }
            try await connection.query(
                """
                DELETE FROM relay_cseq c WHERE c.link_id = ANY(\(batch.endedLinks))
                AND NOT EXISTS (SELECT 1 FROM relay_link l WHERE l.link_id = c.link_id)
                """,
                logger: logger
            )
        }
        for session in batch.sessions {
            try await upsert(session, on: connection)
        }
        if !batch.endedSessions.isEmpty {
            for try await device in try await connection.query(
                "DELETE FROM relay_session WHERE session_id = ANY(\(batch.endedSessions)) RETURNING device_id",
                logger: logger
            ).decode(String.self) {
                changed.insert(device)
            }
        }
        return changed
    }

    /// Raises links' `cseq` marks (a mark never goes down: two nodes may write one around a move).
    func record(marks: [String: Int], on connection: PostgresConnection) async throws {
        guard !marks.isEmpty else { return }
        // In key order: two nodes writing the same links never wait on each other in a circle.
        let links = marks.keys.sorted()
        let cseqs = links.map { Int64(marks[$0]!) }
        try await connection.query(
            """
            INSERT INTO relay_cseq (link_id, cseq) SELECT * FROM unnest(\(links)::text[], \(cseqs)::bigint[])
            ON CONFLICT (link_id) DO UPDATE SET cseq = greatest(relay_cseq.cseq, excluded.cseq)
            """,
            logger: logger
        )
    }

    func upsert(_ session: StoredSession, on connection: PostgresConnection) async throws {
        let documents = session.credentials.map(\.document)
        let expiries = session.credentials.map(\.expiresAt)
        try await connection.query(
            """
            INSERT INTO relay_session (session_id, app_link, device_link, user_id, device_id, created_at, answered, ttl_seconds,
                setup_deadline, refresh_at, credentials, credential_expiries, opened)
            VALUES (\(session.id), \(session.appLink), \(session.deviceLink), \(session.userID), \(session.deviceID), \(session.createdAt),
                \(session.answered), \(session.ttlSeconds), \(session.setupDeadline), \(session.refreshAt), \(documents), \(expiries), true)
            ON CONFLICT (session_id) DO UPDATE SET opened = true, answered = excluded.answered, ttl_seconds = excluded.ttl_seconds,
                setup_deadline = excluded.setup_deadline, refresh_at = excluded.refresh_at, credentials = excluded.credentials,
                credential_expiries = excluded.credential_expiries
            """,
            logger: logger
        )
    }

    /// Writes a link's row: this node's link (a row another node took, or a device link that
    /// another connection of the device replaced, stays as it is).
    func upsert(_ link: StoredLink, node: String, on connection: PostgresConnection) async throws {
        let hash = Data(link.tokenHash)
        let updated = try await connection.query(
            """
            UPDATE relay_link SET token_valid_until = \(link.tokenValidUntil), token_expires_at = \(link.tokenExpiresAt),
                token_devices = \(link.tokenDevices), attached = \(link.attached), restored_through = \(link.restoredThrough.map(Int64.init)),
                updated_at = now()
            WHERE link_id = \(link.id) AND owner_node = \(node) RETURNING 1
            """,
            logger: logger
        ).collect()
        guard updated.isEmpty else { return }
        try await connection.query(
            """
            INSERT INTO relay_link (link_id, token_hash, party, principal, owner_node, token_valid_until, token_expires_at, token_devices, attached)
            VALUES (\(link.id), \(hash), \(link.party), \(link.principal), \(node), \(link.tokenValidUntil), \(link.tokenExpiresAt),
                \(link.tokenDevices), \(link.attached))
            ON CONFLICT DO NOTHING
            """,
            logger: logger
        )
    }

    /// Writes kept messages of this node's links (a link that moved to another node meanwhile
    /// keeps what its new node wrote).
    func insert(_ messages: [(linkID: String, message: StoredMessage)], on connection: PostgresConnection) async throws {
        guard !messages.isEmpty else { return }
        let links = messages.map(\.linkID)
        let seqs = messages.map { Int64($0.message.seq) }
        let bodies = messages.map(\.message.text)
        try await connection.query(
            """
            INSERT INTO relay_outbox (link_id, seq, body)
            SELECT m.link_id, m.seq, m.body FROM unnest(\(links)::text[], \(seqs)::bigint[], \(bodies)::text[]) AS m(link_id, seq, body)
            JOIN relay_link l ON l.link_id = m.link_id AND l.owner_node = \(node)
            ON CONFLICT (link_id, seq) DO UPDATE SET body = excluded.body
            """,
            logger: logger
        )
    }

    /// What the nodes that stopped left (contract §11): declares them dead and takes their
    /// links and sessions over. A node whose lock is free but whose heartbeat is recent (killed
    /// a moment ago, or cut off and about to take its lock again) is waited for, up to the
    /// time after which the fleet would declare it dead anyway.
    public func liveState() async throws(StoreError) -> StoredLiveState {
        var taken = StoredLiveState(links: [], messages: [:], sessions: [])
        let deadline = ContinuousClock.now + heartbeat * 6
        while true {
            let takeover = try await takeOverStoppedNodes(orphansToo: taken.links.isEmpty)
            taken.merge(takeover.state)
            guard takeover.undecided > 0, ContinuousClock.now < deadline else { return taken }
            try? await Task.sleep(for: heartbeat / 4)
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
