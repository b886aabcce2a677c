/// Taking over, on PostgreSQL, the links and sessions of fleet nodes that stopped.
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

extension PostgresStore {
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
    func storedLinks(_ rows: PostgresRowSequence) async throws -> [StoredLink] {
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
    func liveState(of links: [StoredLink], on connection: PostgresConnection) async throws -> StoredLiveState {
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
