/// The fleet's shared rows on PostgreSQL: device links claimed fleet-wide, quotas, reservations, presence (the inbox and moving links are in PostgresStore+Inbox, taking over stopped nodes in PostgresStore+Takeover).
import DeviceAuth
import Foundation
import PostgresNIO
import Registry

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
}
