/// The fleet's shared rows on PostgreSQL: device links claimed fleet-wide, reservations, the inbox between nodes, and taking over the links of nodes that stopped.
import DeviceAuth
import Foundation
import PostgresNIO
import Registry

/// What a pass over the fleet's nodes took over, and how many nodes it could not decide about yet.
public struct FleetTakeover: Sendable {
    public var state: StoredLiveState
    /// Nodes whose lock is free but whose last heartbeat is too recent to call them dead.
    public var undecided: Int
}

extension StoredLiveState {
    /// Adds what another takeover found.
    public mutating func merge(_ other: StoredLiveState) {
        links += other.links
        messages.merge(other.messages) { $1 }
        sessions += other.sessions
        elsewhere.merge(other.elsewhere) { $1 }
        for link in other.links { elsewhere[link.id] = nil }
    }
}

extension PostgresStore: NonceLedger {
    /// One round trip per device connection; the commit does not wait for the WAL flush (a
    /// crash of PostgreSQL itself could forget the last fraction of a second of nonces, each
    /// still bound to its signature's 300 s window).
    public func spend(deviceID: String, nonce: String, expiresAt: Int) async throws -> Bool {
        try await transaction("spending a device nonce") { connection in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            return try await !connection.query(
                """
                INSERT INTO relay_nonce (device_id, nonce, expires_at) VALUES (\(deviceID), \(nonce), \(Int64(expiresAt)))
                ON CONFLICT DO NOTHING RETURNING 1
                """,
                logger: self.logger
            ).collect().isEmpty
        }
    }
}

extension PostgresStore: FleetStore {
    // MARK: Device links

    public func claimDevice(_ link: StoredLink) async throws(StoreError) -> FleetLink? {
        try ensureNotFenced()
        let node = node
        var attempt = 0
        while true {
            do {
                let (replaced, rung) = try await transaction("claiming the device's link") { connection -> (FleetLink?, [String]) in
                    try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
                    try await self.ensureServing(on: connection)
                    var replaced: FleetLink?
                    var rung: [String] = []
                    for try await (id, owner) in try await connection.query(
                        "SELECT link_id, owner_node FROM relay_link WHERE party = 'device' AND principal = \(link.principal) FOR UPDATE",
                        logger: self.logger
                    ).decode((String, String?).self) {
                        replaced = FleetLink(linkID: id, node: owner ?? node)
                    }
                    if let replaced {
                        try await connection.query("DELETE FROM relay_link WHERE link_id = \(replaced.linkID)", logger: self.logger)
                        try await connection.query("DELETE FROM relay_outbox WHERE link_id = \(replaced.linkID)", logger: self.logger)
                        try await connection.query("DELETE FROM relay_cseq WHERE link_id = \(replaced.linkID)", logger: self.logger)
                        if replaced.node != node {
                            // Its node (if it still runs) closes it with 4002; the apps of its
                            // sessions hear them end now, whether or not that node runs.
                            try await connection.query(
                                """
                                INSERT INTO relay_inbox (node_id, link_id, type, body, event)
                                VALUES (\(replaced.node), \(replaced.linkID), 'replaced', '', \(Self.replacedEvent))
                                """,
                                logger: self.logger
                            )
                            rung = [replaced.node]
                            for try await owner in try await connection.query(
                                """
                                WITH gone AS (DELETE FROM relay_session WHERE device_link = \(replaced.linkID) RETURNING session_id, app_link),
                                written AS (
                                    INSERT INTO relay_inbox (node_id, link_id, type, body, event)
                                    SELECT l.owner_node, g.app_link, 'webrtc_close',
                                        '{"type":"webrtc_close","session_id":"' || g.session_id || '","reason":"peer_disconnected","by":"relay"',
                                        '{"closed":["' || g.session_id || '","peer_disconnected","relay"]}'
                                    FROM gone g JOIN relay_link l ON l.link_id = g.app_link AND l.owner_node IS NOT NULL
                                    ORDER BY g.session_id
                                    RETURNING node_id
                                )
                                SELECT DISTINCT node_id FROM written
                                """,
                                logger: self.logger
                            ).decode(String.self) {
                                rung.append(owner)
                            }
                        }
                    }
                    var claimed = link
                    claimed.attached = true
                    try await self.upsert(claimed, node: node, on: connection)
                    return (replaced, rung)
                }
                await ring(rung)
                await announce([link.principal])
                return replaced
            } catch let error where attempt < 3 && error.description.contains("relay_link_one_per_device") {
                // Another node claimed the device between the read and the write: again, now
                // that its row is there to lock.
                attempt += 1
            }
        }
    }

    public func takeQuota(_ key: String, capacity: Int, perSecond: Double) async throws(StoreError) -> Int? {
        // In SET, `q` is the row as it was.
        let refilled = "least(\(Double(capacity)), q.tokens + \(perSecond) * extract(epoch FROM now() - q.updated_at))"
        let (allowed, tokens) = try await call("taking from a limit") { () async throws -> (Bool, Double) in
            var result = (true, 0.0)
            for try await row in try await self.client.query(
                """
                INSERT INTO relay_quota AS q (key, tokens, allowed, updated_at)
                VALUES (\(key), \(Double(capacity) - 1), \(capacity >= 1), now())
                ON CONFLICT (key) DO UPDATE SET
                    allowed = \(unescaped: refilled) >= 1,
                    tokens = \(unescaped: refilled) - CASE WHEN \(unescaped: refilled) >= 1 THEN 1 ELSE 0 END,
                    updated_at = now()
                RETURNING allowed, tokens
                """,
                logger: self.logger
            ).decode((Bool, Double).self) {
                result = row
            }
            return result
        }
        guard !allowed else { return nil }
        return perSecond > 0 ? max(1, Int(((1 - tokens) / perSecond).rounded(.up))) : 60
    }

    public func registerLink(_ link: StoredLink) async throws(StoreError) {
        try ensureNotFenced()
        let node = node
        try await transaction("writing a new link") { connection in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            try await self.ensureServing(on: connection)
            try await self.upsert(link, node: node, on: connection)
        }
    }

    /// The event that tells a node its device link was replaced by a newer connection.
    public static let replacedEvent = "{\"replaced\":true}"

    // MARK: Sessions

    public func reserveSession(_ id: String, app: StoredLink, deviceID: String, createdAt: Double, maxPerDevice: Int, maxPerApp: Int)
        async throws(StoreError) -> FleetReservation
    {
        try ensureNotFenced()
        return try await transaction("reserving a session") { connection -> FleetReservation in
            try await connection.query("SET LOCAL synchronous_commit = off", logger: self.logger)
            try await self.ensureServing(on: connection)
            // (The app's link is known to the fleet already: its row was written before its
            // `hello`, `registerLink`.)
            // The device's row, locked: reservations for one device take turns fleet-wide.
            var device: (id: String, owner: String?, attached: Bool)?
            for try await row in try await connection.query(
                "SELECT link_id, owner_node, attached FROM relay_link WHERE party = 'device' AND principal = \(deviceID) FOR UPDATE",
                logger: self.logger
            ).decode((String, String?, Bool).self) {
                device = row
            }
            guard let device, device.attached, let owner = device.owner else { return .deviceOffline }
            let ofDevice = try await self.count("SELECT count(*) FROM relay_session WHERE device_link = \(device.id)", on: connection)
            guard ofDevice < maxPerDevice else { return .deviceBusy }
            let ofApp = try await self.count("SELECT count(*) FROM relay_session WHERE app_link = \(app.id)", on: connection)
            guard ofApp < maxPerApp else { return .appLimit }
            try await connection.query(
                """
                INSERT INTO relay_session (session_id, app_link, device_link, user_id, device_id, created_at)
                VALUES (\(id), \(app.id), \(device.id), \(app.principal), \(deviceID), \(createdAt))
                """,
                logger: self.logger
            )
            return .reserved(device: FleetLink(linkID: device.id, node: owner))
        }
    }

    public func forgetSession(_ id: String) async throws(StoreError) {
        try await call("forgetting a session") {
            try await self.client.query("DELETE FROM relay_session WHERE session_id = \(id)", logger: self.logger).collect()
        }
    }

    private func count(_ query: PostgresQuery, on connection: PostgresConnection) async throws -> Int {
        var count = 0
        for try await value in try await connection.query(query, logger: logger).decode(Int.self) { count = value }
        return count
    }

    // MARK: Messages between nodes

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

    // MARK: Presence and operators

    public func presence(of deviceIDs: [String]) async throws(StoreError) -> [String: FleetPresence] {
        guard !deviceIDs.isEmpty else { return [:] }
        return try await call("reading presence") {
            var presence: [String: FleetPresence] = [:]
            for try await (device, attached, sessions, capabilities) in try await self.client.query(
                """
                SELECT l.principal, l.attached, (SELECT count(*) FROM relay_session s WHERE s.device_link = l.link_id AND s.opened), l.capabilities
                FROM relay_link l WHERE l.party = 'device' AND l.principal = ANY(\(deviceIDs))
                """,
                logger: self.logger
            ).decode((String, Bool, Int, String?).self) {
                presence[device] = FleetPresence(online: attached, sessions: attached ? sessions : 0, capabilities: capabilities)
            }
            return presence
        }
    }

    public func describe(deviceID: String, linkID: String, capabilities: String) async throws(StoreError) {
        try await call("recording a device's capabilities") {
            try await self.client.query("UPDATE relay_link SET capabilities = \(capabilities) WHERE link_id = \(linkID)", logger: self.logger).collect()
        }
        await announce([deviceID])
    }

    public func sessions(id: String?) async throws(StoreError) -> [FleetSession] {
        try await call("listing sessions") {
            var sessions: [FleetSession] = []
            for try await (session, user, device, deviceLink, created, opened, answered) in try await self.client.query(
                """
                SELECT session_id, user_id, device_id, device_link, created_at, opened, answered FROM relay_session
                WHERE \(id)::text IS NULL OR session_id = \(id)::text ORDER BY created_at
                """,
                logger: self.logger
            ).decode((String, String, String, String, Double, Bool, Bool).self) {
                sessions.append(
                    FleetSession(id: session, userID: user, deviceID: device, deviceLink: deviceLink, createdAt: created, opened: opened, answered: answered)
                )
            }
            return sessions
        }
    }

    public func request(_ delivery: RemoteDelivery) async throws(StoreError) {
        try await send([delivery])
    }

    // MARK: Nodes that stopped

    public func takeOverStoppedNodes() async throws(StoreError) -> StoredLiveState {
        try await takeOverStoppedNodes(orphansToo: false).state
    }

    /// One pass: every node that stopped (a graceful stop says so; a killed node's lock is free
    /// and its heartbeat 2 beats old; a hung node's heartbeat 5 beats old, its lock taken from
    /// it) is declared dead by exactly one node, which takes its links over. With
    /// `orphansToo`, also links no live node serves (left by an older version).
    func takeOverStoppedNodes(orphansToo: Bool) async throws(StoreError) -> FleetTakeover {
        try ensureNotFenced()
        let node = node
        let fast = heartbeat * 2
        let slow = heartbeat * 5
        let fastSeconds = Double(fast.components.seconds) + Double(fast.components.attoseconds) / 1e18
        let slowSeconds = Double(slow.components.seconds) + Double(slow.components.attoseconds) / 1e18
        // Silence means death only when this node could hear: after an outage of the database
        // (or of the network to it) every node's heartbeat is old and its lock was freed, and
        // the others are connecting again as this one did. This node judges by each rule only
        // once it has been connected itself for that rule's time.
        let connected = ContinuousClock.now - (connectedSince ?? .now)
        let mayFast = connected >= fast
        let maySlow = connected >= slow
        let held = """
            EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((l.classid::bigint << 32) | l.objid::bigint) = n.lock_key)
            """
        let candidates = try await call("looking for stopped nodes") {
            try await self.client.query(
                """
                SELECT n.node_id, n.lock_key, \(unescaped: held) AS held, n.state = 'stopped' AS said,
                    \(mayFast) AND NOT \(unescaped: held) AND n.heartbeat_at < now() - make_interval(secs => \(fastSeconds)) AS killed,
                    \(maySlow) AND n.heartbeat_at < now() - make_interval(secs => \(slowSeconds)) AS silent
                FROM relay_node n WHERE n.state <> 'dead' AND n.node_id <> \(node)
                """,
                logger: self.logger
            ).collect().map { try $0.decode((String, Int64, Bool, Bool, Bool, Bool).self) }
        }
        var taken = StoredLiveState(links: [], messages: [:], sessions: [])
        var undecided = 0
        for (dead, lockKey, isHeld, said, killed, silent) in candidates {
            if said || killed {
                // Its lock is free (a stopped node's may be a moment longer; another taker may
                // hold it for its transaction): whoever gets it takes the links.
                let links = try await takeOver(dead, lockKey: lockKey)
                if links.links.isEmpty, said { undecided += 1 }
                taken.merge(links)
            } else if silent {
                // Silent past the slow bound yet holding its lock: hung, or paused. Its own
                // connection is ended (never a taker's) so the lock frees; the next pass takes
                // it over.
                _ = try? await call("ending a hung node's connection") {
                    try await self.client.query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \("relay-node-\(dead)")",
                        logger: self.logger
                    ).collect()
                }
                undecided += 1
            } else if !isHeld {
                // Killed a moment ago, or cut off and about to take its lock again.
                undecided += 1
            }
        }
        if orphansToo { taken.merge(try await takeOver(nil, lockKey: nil)) }
        await announce(Set(taken.links.filter { $0.party == "device" }.map(\.principal)))
        return FleetTakeover(state: taken, undecided: undecided)
    }

    /// Declares `dead` dead (unless another node just did) and takes its links, the messages
    /// queued for them and their sessions over, in one transaction; with no `dead`, the links no
    /// live node serves.
    private func takeOver(_ dead: String?, lockKey: Int64?) async throws(StoreError) -> StoredLiveState {
        let node = node
        return try await transaction("taking over a stopped node's links") { connection -> StoredLiveState in
            let empty = StoredLiveState(links: [], messages: [:], sessions: [])
            try await self.ensureServing(on: connection)
            if let dead, let lockKey {
                // One taker per dead node: its lock (free now) for this transaction, and its row.
                var locked = false
                for try await value in try await connection.query("SELECT pg_try_advisory_xact_lock(\(lockKey))", logger: self.logger).decode(Bool.self) {
                    locked = value
                }
                guard locked else { return empty }
                let marked = try await connection.query(
                    "UPDATE relay_node SET state = 'dead' WHERE node_id = \(dead) AND state <> 'dead' RETURNING 1",
                    logger: self.logger
                ).collect()
                guard !marked.isEmpty else { return empty }
                // Nodes dead for a day are history: their rows go (the table stays small
                // through years of deploys).
                try await connection.query(
                    "DELETE FROM relay_node WHERE state = 'dead' AND heartbeat_at < now() - interval '1 day'",
                    logger: self.logger
                )
            }
            // The links first: a message being queued for one of them holds its row until it
            // commits, so the inbox, moved after, has every message addressed to the dead node
            // (and whatever comes after goes to this one).
            let stored = try await self.storedLinks(
                connection.query(
                    """
                    UPDATE relay_link SET owner_node = \(node), owner_epoch = owner_epoch + 1, attached = false, updated_at = now()
                    WHERE CASE WHEN \(dead)::text IS NULL
                        THEN owner_node IS NULL OR owner_node NOT IN (SELECT node_id FROM relay_node WHERE state <> 'dead')
                        ELSE owner_node = \(dead)::text END
                    RETURNING link_id, token_hash, party, principal, token_valid_until, token_expires_at, token_devices,
                        coalesce((SELECT c.cseq FROM relay_cseq c WHERE c.link_id = relay_link.link_id), 0), restored_through
                    """,
                    logger: self.logger
                )
            )
            if let dead {
                // Taken or not: what the dead node took but had not written the effects of is delivered here.
                try await connection.query("UPDATE relay_inbox SET node_id = \(node), taken = false WHERE node_id = \(dead)", logger: self.logger)
            }
            guard !stored.isEmpty else { return empty }
            return try await self.liveState(of: stored, on: connection)
        }
    }

    /// Links read as `link_id, token_hash, party, principal, token_valid_until, token_expires_at, token_devices, cseq,
    /// restored_through`.
    private func storedLinks(_ rows: PostgresRowSequence) async throws -> [StoredLink] {
        var links: [StoredLink] = []
        for try await (id, hash, party, principal, validUntil, expiresAt, devices, cseq, restoredThrough) in rows.decode(
            (String, Data, String, String, Double?, Double?, [String]?, Int64, Int64?).self
        ) {
            links.append(
                StoredLink(
                    id: id,
                    tokenHash: [UInt8](hash),
                    party: party,
                    principal: principal,
                    tokenValidUntil: validUntil,
                    tokenExpiresAt: expiresAt,
                    tokenDevices: devices,
                    cseq: Int(cseq),
                    restoredThrough: restoredThrough.map(Int.init)
                )
            )
        }
        return links
    }

    /// The kept messages of `links`, the sessions they take part in, and where those sessions'
    /// other parties are.
    private func liveState(of links: [StoredLink], on connection: PostgresConnection) async throws -> StoredLiveState {
        let ids = links.map(\.id)
        var messages: [String: [StoredMessage]] = [:]
        for try await (link, seq, body) in try await connection.query(
            "SELECT link_id, seq, body FROM relay_outbox WHERE link_id = ANY(\(ids)) ORDER BY link_id, seq",
            logger: logger
        ).decode((String, Int, String).self) {
            messages[link, default: []].append(StoredMessage(seq: seq, text: body))
        }
        var sessions: [StoredSession] = []
        for try await row in try await connection.query(
            """
            SELECT session_id, app_link, device_link, user_id, device_id, created_at, answered, ttl_seconds, setup_deadline, refresh_at,
                credentials, credential_expiries FROM relay_session WHERE app_link = ANY(\(ids)) OR device_link = ANY(\(ids))
            """,
            logger: logger
        ) {
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
        let mine = Set(ids)
        let others = Array(Set(sessions.flatMap { [$0.appLink, $0.deviceLink] }).subtracting(mine))
        var elsewhere: [String: String] = [:]
        if !others.isEmpty {
            for try await (link, owner) in try await connection.query(
                "SELECT link_id, owner_node FROM relay_link WHERE link_id = ANY(\(others)) AND owner_node IS NOT NULL",
                logger: logger
            ).decode((String, String).self) {
                elsewhere[link] = owner
            }
        }
        return StoredLiveState(links: links, messages: messages, sessions: sessions, elsewhere: elsewhere)
    }
}
