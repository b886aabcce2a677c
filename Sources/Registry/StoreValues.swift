/// What the store hands out and takes in: device entries, audit rows, events, and its error.
import DeviceAuth
import Foundation
import GRDB
import OpenSSLCrypto

/// A registered device as the registry holds it.
public struct DeviceEntry: Sendable, Equatable {
    public var deviceID: String
    /// The current secret first; the previous one during a rotation.
    public var secrets: [String]
    public var owners: [String]
    public var label: String
    public var revokedAt: Date?
    public var createdAt: Date
    public var lastSeenAt: Date?

    public var revoked: Bool { revokedAt != nil }

    public init(deviceID: String, secrets: [String], owners: [String], label: String, revokedAt: Date?, createdAt: Date, lastSeenAt: Date?) {
        self.deviceID = deviceID
        self.secrets = secrets
        self.owners = owners
        self.label = label
        self.revokedAt = revokedAt
        self.createdAt = createdAt
        self.lastSeenAt = lastSeenAt
    }

    public var record: DeviceRecord {
        DeviceRecord(deviceID: deviceID, secrets: secrets, owners: Set(owners), revoked: revoked)
    }
}

/// One session of the audit log.
public struct AuditEntry: Sendable, Equatable {
    public var sessionID: String
    public var userID: String
    public var deviceID: String
    public var createdAt: Date
    public var answeredAt: Date?
    public var closedAt: Date?
    public var closeReason: String?
    public var closedBy: String?

    public init(
        sessionID: String,
        userID: String,
        deviceID: String,
        createdAt: Date,
        answeredAt: Date?,
        closedAt: Date?,
        closeReason: String?,
        closedBy: String?
    ) {
        self.sessionID = sessionID
        self.userID = userID
        self.deviceID = deviceID
        self.createdAt = createdAt
        self.answeredAt = answeredAt
        self.closedAt = closedAt
        self.closeReason = closeReason
        self.closedBy = closedBy
    }
}

/// Which audit entries to read: newest first, filtered, a page at a time.
public struct AuditQuery: Sendable, Equatable {
    /// Where a page ends: entries strictly older (in the order created_at, then session id).
    public struct Cursor: Sendable, Equatable {
        /// The last entry's creation time, in Unix milliseconds (as the store keeps it).
        public var createdAtMilliseconds: Int64
        public var sessionID: String

        public init(createdAtMilliseconds: Int64, sessionID: String) {
            self.createdAtMilliseconds = createdAtMilliseconds
            self.sessionID = sessionID
        }
    }

    public var deviceID: String?
    public var userID: String?
    /// Sessions created at or after `since`, and before `until`.
    public var since: Date?
    public var until: Date?
    public var after: Cursor?
    public var limit: Int

    public init(deviceID: String? = nil, userID: String? = nil, since: Date? = nil, until: Date? = nil, after: Cursor? = nil, limit: Int = 100) {
        self.deviceID = deviceID
        self.userID = userID
        self.since = since
        self.until = until
        self.after = after
        self.limit = limit
    }
}

extension Date {
    /// The time in whole Unix milliseconds: how the audit log stores its times.
    public var unixMilliseconds: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }

    public init(unixMilliseconds: Int64) {
        self.init(timeIntervalSince1970: Double(unixMilliseconds) / 1000)
    }
}

/// What the relay records, in batches.
public enum StoreEvent: Sendable {
    case sessionOpened(sessionID: String, userID: String, deviceID: String, at: Date)
    case sessionAnswered(sessionID: String, at: Date)
    case sessionClosed(sessionID: String, at: Date, reason: String, closedBy: String)
    case deviceSeen(deviceID: String, at: Date)
    /// A device signature's nonce was spent; it stays spent until `expiresAt` (Unix seconds).
    case nonceSpent(deviceID: String, nonce: String, expiresAt: Int)
}

/// A store operation that failed, with a line a person can act on.
public struct StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case deviceExists
        case unknownDevice
        case invalidDeviceID
        /// The operation needs the device not revoked (rotate), or revoked (delete).
        case wrongDeviceState
        case unusable
    }

    public var kind: Kind
    public var description: String

    init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }

    init(_ description: String) {
        self.init(.unusable, description)
    }

    /// The store cannot be used: unreachable, failing, or misconfigured.
    public static func unusable(_ description: String) -> StoreError { StoreError(.unusable, description) }
    public static func deviceExists(_ id: String) -> StoreError { StoreError(.deviceExists, "device '\(id)' is already registered") }
    public static func unknownDevice(_ id: String) -> StoreError { StoreError(.unknownDevice, "device '\(id)' is not registered") }
    public static func deviceRevoked(_ id: String) -> StoreError {
        StoreError(.wrongDeviceState, "device '\(id)' is revoked: unrevoke it first (a revoked device keeps no usable secret)")
    }
    public static func deviceNotRevoked(_ id: String) -> StoreError {
        StoreError(.wrongDeviceState, "device '\(id)' is not revoked: revoke it first (that disconnects it), then delete it")
    }
    public static func invalidDeviceID(_ id: String) -> StoreError {
        StoreError(.invalidDeviceID, "'\(id)' is not a valid device id (1-128 characters of [A-Za-z0-9._:-])")
    }
}
