/// Live links, their kept messages and open sessions in the store, so a restarted relay takes them over (contract §11).
import Foundation
import GRDB

/// A link as the store keeps it across restarts. Never its resume token: a hash of it.
public struct StoredLink: Sendable, Equatable {
    public var id: String
    /// SHA-256 of the resume token.
    public var tokenHash: [UInt8]
    /// `app` or `device`.
    public var party: String
    /// The user id of an app, the device id of a device.
    public var principal: String
    /// An app's token: honoured until then (Unix seconds, leeway included), when it expires
    /// (`exp`), and the devices it grants (nil when it has no `devices` claim).
    public var tokenValidUntil: Double?
    public var tokenExpiresAt: Double?
    public var tokenDevices: [String]?
    /// A transport serves it (a fleet's other nodes read it: a device that may take a session).
    public var attached: Bool
    /// The client's messages up to this `cseq` were handled for good (contract §11): sent again
    /// after a resume, they are dropped as duplicates.
    public var cseq: Int
    /// Restored from a store and not resumed since: the highest seq the store knew then (kept
    /// messages after it were queued since).
    public var restoredThrough: Int?

    public init(
        id: String,
        tokenHash: [UInt8],
        party: String,
        principal: String,
        tokenValidUntil: Double? = nil,
        tokenExpiresAt: Double? = nil,
        tokenDevices: [String]? = nil,
        attached: Bool = false,
        cseq: Int = 0,
        restoredThrough: Int? = nil
    ) {
        self.attached = attached
        self.cseq = cseq
        self.restoredThrough = restoredThrough
        self.id = id
        self.tokenHash = tokenHash
        self.party = party
        self.principal = principal
        self.tokenValidUntil = tokenValidUntil
        self.tokenExpiresAt = tokenExpiresAt
        self.tokenDevices = tokenDevices
    }
}

/// A kept (not yet acked) message of a link, as its client receives it.
public struct StoredMessage: Sendable, Equatable {
    public var seq: Int
    public var text: String

    public init(seq: Int, text: String) {
        self.seq = seq
        self.text = text
    }
}

/// An open session as the store keeps it across restarts: deadlines as Unix seconds.
public struct StoredSession: Sendable, Equatable, Codable {
    /// A credential document minted for the session (JSON) and when it expires.
    public struct Credential: Sendable, Equatable, Codable {
        public var document: String
        public var expiresAt: Double

        public init(document: String, expiresAt: Double) {
            self.document = document
            self.expiresAt = expiresAt
        }
    }

    public var id: String
    public var appLink: String
    public var deviceLink: String
    public var userID: String
    public var deviceID: String
    public var createdAt: Double
    public var answered: Bool
    public var ttlSeconds: Int
    public var setupDeadline: Double?
    public var refreshAt: Double?
    public var credentials: [Credential]

    public init(
        id: String,
        appLink: String,
        deviceLink: String,
        userID: String,
        deviceID: String,
        createdAt: Double,
        answered: Bool,
        ttlSeconds: Int,
        setupDeadline: Double?,
        refreshAt: Double?,
        credentials: [Credential]
    ) {
        self.id = id
        self.appLink = appLink
        self.deviceLink = deviceLink
        self.userID = userID
        self.deviceID = deviceID
        self.createdAt = createdAt
        self.answered = answered
        self.ttlSeconds = ttlSeconds
        self.setupDeadline = setupDeadline
        self.refreshAt = refreshAt
        self.credentials = credentials
    }
}

/// What changed in the relay's live state since the last write, as one batch.
public struct LiveStateBatch: Sendable {
    public var links: [StoredLink] = []
    public var endedLinks: [String] = []
    public var messages: [(linkID: String, message: StoredMessage)] = []
    /// Per link: its messages before this seq are gone (acked or dropped); both bounds of the
    /// range to delete, so the delete never scans from the table's start.
    public var forgotten: [(linkID: String, from: Int, before: Int)] = []
    public var sessions: [StoredSession] = []
    public var endedSessions: [String] = []
    /// Per link: its client's messages up to this `cseq` are done (contract §11). With a
    /// snapshot, every live link's mark is here.
    public var marks: [(linkID: String, cseq: Int)] = []
    /// Messages from the fleet's inbox delivered before this batch was gathered (its seqs): what
    /// they caused is in it, so they go with it (a fleet's store only).
    public var inboxDone: [Int64] = []
    /// Every live link's kept messages: when set, the outbox log is replaced by it (and
    /// `messages` and `forgotten` are already in it).
    public var snapshot: [String: [StoredMessage]]?

    public init() {}

    public var isEmpty: Bool {
        links.isEmpty && endedLinks.isEmpty && messages.isEmpty && forgotten.isEmpty && sessions.isEmpty && endedSessions.isEmpty
            && marks.isEmpty && inboxDone.isEmpty && snapshot == nil
    }

    /// How many rows and records it writes (for logs and the retry bound).
    public var count: Int {
        links.count + endedLinks.count + messages.count + forgotten.count + sessions.count + endedSessions.count + marks.count + inboxDone.count
            + (snapshot?.values.reduce(0) { $0 + $1.count } ?? 0)
    }
}

/// Everything a previous run left live.
public struct StoredLiveState: Sendable {
    public var links: [StoredLink]
    /// Each link's kept messages, in seq order.
    public var messages: [String: [StoredMessage]]
    public var sessions: [StoredSession]
    /// The node serving each session party that is not among `links` (a fleet's other nodes).
    public var elsewhere: [String: String]

    public init(links: [StoredLink], messages: [String: [StoredMessage]], sessions: [StoredSession], elsewhere: [String: String] = [:]) {
        self.links = links
        self.messages = messages
        self.sessions = sessions
        self.elsewhere = elsewhere
    }
}

extension RelayStore {
    static func registerLiveStateMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v3: live links, kept messages, open sessions") { db in
            try db.execute(
                sql: """
                    CREATE TABLE live_link (
                        id TEXT PRIMARY KEY NOT NULL,
                        token_hash BLOB NOT NULL,
                        party TEXT NOT NULL,
                        principal TEXT NOT NULL,
                        token_valid_until REAL,
                        token_expires_at REAL,
                        token_devices TEXT
                    );
                    CREATE TABLE live_session (
                        id TEXT PRIMARY KEY NOT NULL,
                        app_link TEXT NOT NULL,
                        device_link TEXT NOT NULL,
                        user_id TEXT NOT NULL,
                        device_id TEXT NOT NULL,
                        created_at REAL NOT NULL,
                        answered INTEGER NOT NULL,
                        ttl_seconds INTEGER NOT NULL,
                        setup_deadline REAL,
                        refresh_at REAL,
                        credentials TEXT NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v4: a restored link's boundary (contract §11)") { db in
            try db.execute(sql: "ALTER TABLE live_link ADD COLUMN restored_through INTEGER")
        }
    }

    /// Writes batches of live-state changes, in order: kept messages to the outbox log
    /// (`OutboxLog`), links and sessions in one SQLite transaction. The live state must
    /// survive the relay process, not the machine: a commit does not wait for the disk
    /// (`synchronous = NORMAL` in WAL mode), unlike the registry and the audit log.
    public func save(_ batches: [LiveStateBatch]) async throws(StoreError) {
        // A page-cache write of one batch: short enough for the caller's thread, and most
        // batches need nothing else (no hop to GRDB's queue for them).
        try run {
            // A snapshot holds everything before it: what follows is appended to it.
            if let last = batches.lastIndex(where: { $0.snapshot != nil }), let snapshot = batches[last].snapshot {
                try outbox.replace(with: snapshot, marks: batches[last].marks)
                try outbox.append(Array(batches[(last + 1)...]))
            } else {
                try outbox.append(batches)
            }
        }
        guard batches.contains(where: { !$0.links.isEmpty || !$0.endedLinks.isEmpty || !$0.sessions.isEmpty || !$0.endedSessions.isEmpty }) else {
            return
        }
        try await run {
            try await self.pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
                defer { try? db.execute(sql: "PRAGMA synchronous = FULL") }
                try db.inTransaction {
                    for batch in batches { try Self.write(batch, in: db) }
                    return .commit
                }
            }
        }
    }

    private static func write(_ batch: LiveStateBatch, in db: Database) throws {
        for link in batch.links {
            try db.cachedStatement(
                sql: """
                    INSERT OR REPLACE INTO live_link
                    (id, token_hash, party, principal, token_valid_until, token_expires_at, token_devices, restored_through)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(
                arguments: [
                    link.id, Data(link.tokenHash), link.party, link.principal, link.tokenValidUntil, link.tokenExpiresAt,
                    link.tokenDevices.map { $0.joined(separator: "\n") }, link.restoredThrough,
                ]
            )
        }
        for linkID in batch.endedLinks {
            try db.cachedStatement(sql: "DELETE FROM live_link WHERE id = ?").execute(arguments: [linkID])
        }
        for session in batch.sessions {
            try db.cachedStatement(
                sql: """
                    INSERT OR REPLACE INTO live_session
                    (id, app_link, device_link, user_id, device_id, created_at, answered, ttl_seconds, setup_deadline, refresh_at, credentials)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ).execute(
                arguments: [
                    session.id, session.appLink, session.deviceLink, session.userID, session.deviceID, session.createdAt, session.answered,
                    session.ttlSeconds, session.setupDeadline, session.refreshAt, try encode(session.credentials),
                ]
            )
        }
        for sessionID in batch.endedSessions {
            try db.cachedStatement(sql: "DELETE FROM live_session WHERE id = ?").execute(arguments: [sessionID])
        }
    }

    /// Bytes in the outbox log (what a snapshot would shrink).
    public var outboxLogBytes: Int { outbox.size }

    /// What a previous run left live, for a relay starting up.
    public func liveState() throws(StoreError) -> StoredLiveState {
        try run {
            try pool.read { db in
                let log = OutboxLog.read(path: self.outbox.path)
                let links = try Row.fetchAll(db, sql: "SELECT * FROM live_link").map { row in
                    StoredLink(
                        id: row["id"],
                        tokenHash: [UInt8](row["token_hash"] as Data),
                        party: row["party"],
                        principal: row["principal"],
                        tokenValidUntil: row["token_valid_until"],
                        tokenExpiresAt: row["token_expires_at"],
                        tokenDevices: (row["token_devices"] as String?).map { $0.split(separator: "\n").map(String.init) },
                        cseq: log.marks[row["id"] as String] ?? 0,
                        restoredThrough: row["restored_through"]
                    )
                }
                let messages = log.messages
                let sessions = try Row.fetchAll(db, sql: "SELECT * FROM live_session").map { row in
                    StoredSession(
                        id: row["id"],
                        appLink: row["app_link"],
                        deviceLink: row["device_link"],
                        userID: row["user_id"],
                        deviceID: row["device_id"],
                        createdAt: row["created_at"],
                        answered: row["answered"],
                        ttlSeconds: row["ttl_seconds"],
                        setupDeadline: row["setup_deadline"],
                        refreshAt: row["refresh_at"],
                        credentials: try Self.decode(row["credentials"])
                    )
                }
                return StoredLiveState(links: links, messages: messages, sessions: sessions)
            }
        }
    }

    private static func encode(_ credentials: [StoredSession.Credential]) throws -> String {
        let value = credentials.map { ["document": $0.document, "expires_at": String($0.expiresAt)] }
        return String(decoding: try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]), as: UTF8.self)
    }

    private static func decode(_ text: String) throws -> [StoredSession.Credential] {
        guard let entries = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: String]] else { return [] }
        return entries.compactMap { entry in
            guard let document = entry["document"], let expiresAt = entry["expires_at"].flatMap(Double.init) else { return nil }
            return StoredSession.Credential(document: document, expiresAt: expiresAt)
        }
    }
}
