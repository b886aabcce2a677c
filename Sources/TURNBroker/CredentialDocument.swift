/// The ICE server document both parties receive, with its ttl and expiry.
import Foundation

/// One `RTCIceServer`: `urls` is a string or an array on the wire; it is kept as sent.
public struct ICEServer: Sendable, Equatable, Codable {
    public enum URLs: Sendable, Equatable, Codable {
        case one(String)
        case many([String])

        public var all: [String] {
            switch self {
            case .one(let url): [url]
            case .many(let urls): urls
            }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let url = try? container.decode(String.self) {
                self = .one(url)
            } else {
                self = .many(try container.decode([String].self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .one(let url): try container.encode(url)
            case .many(let urls): try container.encode(urls)
            }
        }
    }

    public var urls: URLs
    public var username: String?
    public var credential: String?

    public init(urls: URLs, username: String? = nil, credential: String? = nil) {
        self.urls = urls
        self.username = username
        self.credential = credential
    }
}

/// What a session's `ice_servers` carries and `POST /api/turn/credentials` returns:
/// `{"iceServers":[...],"ttl":N,"expiresAt":"2026-11-21T20:00:00Z"}`.
public struct CredentialDocument: Sendable, Equatable, Codable {
    public var iceServers: [ICEServer]
    /// Lifetime in seconds.
    public var ttl: Int
    /// ISO 8601, UTC, whole seconds.
    public var expiresAt: String

    public init(iceServers: [ICEServer], ttl: Int, issuedAt: Date) {
        self.iceServers = iceServers
        self.ttl = ttl
        self.expiresAt = Self.format(issuedAt.addingTimeInterval(TimeInterval(ttl)))
    }

    /// True once `expiresAt` has passed.
    public func hasExpired(at now: Date) -> Bool {
        guard let expiry = Self.parse(expiresAt) else { return true }
        return expiry <= now
    }

    static func parse(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    /// `2026-11-21T20:00:00Z`. Written by hand: creating an `ISO8601DateFormatter` costs more
    /// than the rest of a mint.
    static func format(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))Z"
    }
}
