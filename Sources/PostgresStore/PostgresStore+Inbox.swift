/// The fleet's messages between nodes on PostgreSQL: the inbox, and links moving from one node to another.
import DeviceAuth
import Foundation
import PostgresNIO
import Registry

extension PostgresStore {
    public func send(_ deliveries: [RemoteDelivery]) async throws(StoreError) {
        guard !deliveries.isEmpty else { return }
        try ensureNotFenced()
        let links = deliveries.map(\.linkID)
        let types = deliveries.map(\.type)
        let bodies = deliveries.map(\.openBody)
        let events = deliveries.map { $0.event ?? "" }
        // Each row goes to the node serving its link as it is written (a link that moves waits
        // for this statement, then takes its rows along); rows for links gone are dropped. One
        // statement, one round trip: it holds this node's row (nothing is written once the fleet
        // declared the node dead) and commits without waiting for the WAL flush.
        let node = node
        let (serving, nodes) = try await call("sending messages to other nodes") { () async throws -> (Bool, [String]) in
            var result = (false, [String]())
            for try await row in try await self.client.query(
                """
                WITH serving AS (
                    SELECT 1 FROM relay_node WHERE node_id = \(node) AND state IN ('serving', 'draining') FOR SHARE
                ),
                written AS (
                    INSERT INTO relay_inbox (node_id, link_id, type, body, event)
                    SELECT l.owner_node, m.link, m.type, m.body, nullif(m.event, '')
                    FROM unnest(\(links)::text[], \(types)::text[], \(bodies)::text[], \(events)::text[]) WITH ORDINALITY AS m(link, type, body, event, ord)
                    JOIN relay_link l ON l.link_id = m.link AND l.owner_node IS NOT NULL
                    WHERE EXISTS (SELECT 1 FROM serving)
                    ORDER BY m.ord
                    FOR SHARE OF l
                    RETURNING node_id
                )
                SELECT set_config('synchronous_commit', 'off', true) = 'off', EXISTS (SELECT 1 FROM serving),
                    coalesce(array(SELECT DISTINCT node_id FROM written), '{}')
                """,
                logger: self.logger
            ).decode((Bool, Bool, [String]).self) {
                result = (row.1, row.2)
            }
            return result
        }
        guard serving else {
            fence()
            try ensureNotFenced()
            return
        }
        // After the commit, in a statement of its own: a NOTIFY inside a writing transaction
        // serializes every commit of the database.
        await ring(nodes)
    }

    /// Wakes the nodes' inbox readers (a hint: they also look every few hundred ms).
    func ring(_ nodes: [String]) async {
        guard !nodes.isEmpty else { return }
        _ = try? await call("ringing other nodes") {
            try await self.client.query("SELECT pg_notify('relay_node_' || n, '') FROM unnest(\(nodes)::text[]) AS n", logger: self.logger)
                .collect()
        }
    }

    public func tidyInbox() async throws(StoreError) {
        _ = try await call("reclaiming the inbox's space") {
            // Another node's vacuum under way: this one skips.
            try await self.client.query("VACUUM (SKIP_LOCKED, TRUNCATE false) relay_inbox", logger: self.logger).collect()
        }
    }

    public func releaseStaleInbox(after age: Duration) async throws(StoreError) -> Int {
        let node = node
        let seconds = Double(age.components.seconds)
        return try await call("releasing messages taken long ago") {
            try await self.client.query(
                """
                UPDATE relay_inbox SET taken = false
                WHERE node_id = \(node) AND taken AND taken_at < now() - make_interval(secs => \(seconds)) RETURNING 1
                """,
                logger: self.logger
            ).collect().count
        }
    }

    public func takeInbox(limit: Int) async throws(StoreError) -> [RemoteDelivery] {
        let node = node
        return try await call("reading messages from other nodes") {
            var rows: [(Int64, RemoteDelivery)] = []
            for try await (seq, link, type, body, event) in try await self.client.query(
                """
                UPDATE relay_inbox SET taken = true, taken_at = now()
                WHERE seq IN (SELECT seq FROM relay_inbox WHERE node_id = \(node) AND NOT taken ORDER BY seq LIMIT \(limit))
                RETURNING seq, link_id, type, body, event
                """,
                logger: self.logger
            ).decode((Int64, String, String, String, String?).self) {
                rows.append((seq, RemoteDelivery(linkID: link, type: type, openBody: body, event: event, seq: seq)))
            }
            return rows.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    // MARK: Links moving between nodes

    public func link(tokenHash: [UInt8]) async throws(StoreError) -> FleetLinkRow? {
        let hash = Data(tokenHash)
        return try await call("finding a link") {
            try await self.linkRow(
                self.client.query(
                    """
                    SELECT l.link_id, l.party, l.principal, l.owner_node, coalesce(n.state IN ('serving', 'draining'), false), l.owner_epoch
                    FROM relay_link l LEFT JOIN relay_node n ON n.node_id = l.owner_node WHERE l.token_hash = \(hash)
                    """,
                    logger: self.logger
                )
            )
        }
    }

    public func link(id linkID: String) async throws(StoreError) -> FleetLinkRow? {
        try await call("finding a link") {
            try await self.linkRow(
                self.client.query(
                    """
                    SELECT l.link_id, l.party, l.principal, l.owner_node, coalesce(n.state IN ('serving', 'draining'), false), l.owner_epoch
                    FROM relay_link l LEFT JOIN relay_node n ON n.node_id = l.owner_node WHERE l.link_id = \(linkID)
                    """,
                    logger: self.logger
                )
            )
        }
    }

    private func linkRow(_ rows: PostgresRowSequence) async throws -> FleetLinkRow? {
        var row: FleetLinkRow?
        for try await (id, party, principal, owner, runs, epoch) in rows.decode((String, String, String, String?, Bool, Int64).self) {
            row = FleetLinkRow(linkID: id, party: party, principal: principal, owner: owner, ownerRuns: runs, epoch: epoch)
        }
        return row
    }

    public func requestHandover(of linkID: String, from owner: String, epoch: Int64) async throws(StoreError) {
        let event = "{\"handover\":\"\(node)\",\"epoch\":\(epoch)}"
        try await call("asking for a link") {
            try await self.client.query(
                "INSERT INTO relay_inbox (node_id, link_id, type, body, event) VALUES (\(owner), \(linkID), 'handover', '', \(event))",
                logger: self.logger
            ).collect()
        }
        await ring([owner])
    }

    public func handOver(_ handover: LinkHandover, carrying carried: [RemoteDelivery], to destination: String) async throws(StoreError) -> Bool {
        try ensureNotFenced()
        let node = node
        let link = handover.link
        let moved = try await transaction("handing a link over") { connection -> Bool in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            try await self.ensureServing(on: connection)
            // What it keeps and its sessions first, while the link is still this node's.
            try await connection.query("DELETE FROM relay_outbox WHERE link_id = \(link.id)", logger: self.logger)
            try await self.insert(handover.messages.map { (link.id, $0) }, on: connection)
            for session in handover.sessions { try await self.upsert(session, on: connection) }
            let updated = try await connection.query(
                """
                UPDATE relay_link SET owner_node = \(destination), owner_epoch = owner_epoch + 1, attached = false,
                    token_valid_until = \(link.tokenValidUntil), token_expires_at = \(link.tokenExpiresAt), token_devices = \(link.tokenDevices),
                    restored_through = \(link.restoredThrough.map(Int64.init)), updated_at = now()
                WHERE link_id = \(link.id) AND owner_node = \(node) RETURNING 1
                """,
                logger: self.logger
            ).collect()
            guard !updated.isEmpty else { return false }
            try await self.record(marks: [link.id: link.cseq], on: connection)
            // What is queued for it and not taken, and what was taken but not delivered (in
            // their places: before whatever was queued for the link after them). What this node
            // delivered to it is in what it keeps: gone with this transaction.
            let seqs = carried.compactMap(\.seq)
            try await connection.query(
                """
                UPDATE relay_inbox SET node_id = \(destination), taken = false
                WHERE link_id = \(link.id) AND node_id = \(node) AND (NOT taken OR seq = ANY(\(seqs)))
                """,
                logger: self.logger
            )
            try await connection.query("DELETE FROM relay_inbox WHERE link_id = \(link.id) AND node_id = \(node) AND taken", logger: self.logger)
            return true
        }
        if moved {
            await ring([destination])
            if link.party == "device" { await announce([link.principal]) }
        }
        return moved
    }

    public func liveState(ofLink linkID: String) async throws(StoreError) -> StoredLiveState? {
        let node = node
        return try await transaction("reading a link handed over") { connection -> StoredLiveState? in
            let links = try await self.storedLinks(
                connection.query(
                    """
                    SELECT link_id, token_hash, party, principal, token_valid_until, token_expires_at, token_devices,
                        coalesce((SELECT c.cseq FROM relay_cseq c WHERE c.link_id = relay_link.link_id), 0), restored_through
                    FROM relay_link WHERE link_id = \(linkID) AND owner_node = \(node)
                    """,
                    logger: self.logger
                )
            )
            guard !links.isEmpty else { return nil }
            return try await self.liveState(of: links, on: connection)
        }
    }
}
