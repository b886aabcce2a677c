/// One admission for every transport: the connection-attempt limit, the client's credentials, and what it asks to resume.
import DeviceAuth
import Hummingbird
import HummingbirdCore
import Logging
import RelayCore

/// How a client gets onto a link, decided the same way for a WebSocket upgrade and for
/// `POST /api/link` (contract §1, §4, §5): the app's token or the device's signature is checked
/// first, and a valid one is never refused for what other clients did (robots on a cellular
/// network share carrier-grade NAT addresses with strangers). A failing attempt counts against
/// its address and, for a device, against the device id it claims; once either has failed too
/// often, its next failing attempts are answered 429 with `Retry-After` instead of 401. Then
/// connections are limited per authenticated device or user, so many robots behind one NAT (or
/// every client behind one proxy) do not share one budget. A resume request is read with the
/// same rules wherever the transport carries it.
struct ClientAdmission: Sendable {
    let authenticator: ClientAuthenticator
    /// Connections per device id or user id.
    let attempts: RateLimiter
    /// Failed authentications per client address and per claimed device id.
    let failures: RateLimiter

    /// The client, as `party`, from `address` (the edge's client address); a refusal is the
    /// HTTP answer to give. `query` is the request's query, parsed once by the transport.
    func admit(
        _ request: Request,
        query: FlatDictionary<Substring, Substring>,
        as party: Party,
        from address: String?,
        logger: Logger
    ) async throws(RelayHTTPError) -> ClientIdentity {
        let address = address ?? "unknown"
        let identity: ClientIdentity
        do throws(RelayHTTPError) {
            switch party {
            case .app: identity = .app(try await authenticator.app(request, query: query, logger: logger))
            case .device: identity = .device(try await authenticator.device(request, query: query, logger: logger))
            }
        } catch {
            guard error.status == .unauthorized || error.status == .forbidden else { throw error }
            throw failed(error, keys: Self.failureKeys(party: party, query: query, address: address), logger: logger)
        }
        let (key, who) = identity.limitKey
        if case .denied(let retryAfter) = attempts.take(key) {
            logger.info("Too many connections", metadata: ["client.ip": "\(address)", "client.key": "\(key)"])
            throw RelayHTTPError(.tooManyRequests, "Too many connections for this \(who); retry in \(retryAfter) s", headers: [.retryAfter: String(retryAfter)])
        }
        return identity
    }

    /// A failed authentication: `refusal` itself while each of `keys` has failures to spare
    /// (taking one from each), else 429 with the longest wait.
    private func failed(_ refusal: RelayHTTPError, keys: [(key: String, what: String)], logger: Logger) -> RelayHTTPError {
        let exhausted = keys.compactMap { key -> (what: String, retryAfter: Int)? in
            guard case .denied(let retryAfter) = failures.check(key.key) else { return nil }
            return (key.what, retryAfter)
        }
        guard let longest = exhausted.max(by: { $0.retryAfter < $1.retryAfter }) else {
            for key in keys { _ = failures.take(key.key) }
            return refusal
        }
        logger.info("Too many failed authentications", metadata: ["client.key": "\(keys.map(\.key).joined(separator: " "))"])
        return RelayHTTPError(
            .tooManyRequests,
            "Too many failed authentications from this \(longest.what); retry in \(longest.retryAfter) s",
            headers: [.retryAfter: String(longest.retryAfter)]
        )
    }

    /// What a failing attempt counts against: its address, and the device id a device claims.
    private static func failureKeys(party: Party, query: FlatDictionary<Substring, Substring>, address: String) -> [(key: String, what: String)] {
        var keys = [(key: "address:" + address, what: "address")]
        if party == .device, let deviceID = query.get("device_id"), DeviceSignature.isValidDeviceID(deviceID) {
            keys.append((key: "device:" + deviceID, what: "device id"))
        }
        return keys
    }
}

extension ClientIdentity {
    /// The connection limit's key, and what it limits in words.
    var limitKey: (key: String, who: String) {
        switch self {
        case .app(let identity): ("user:" + identity.userID, "user")
        case .device(let record): ("device:" + record.deviceID, "device")
        }
    }
}

/// A field of a request as a transport found it.
enum RequestField<Value: Sendable>: Sendable {
    case absent
    case present(Value)
    /// There, but not of the right type.
    case malformed
}

/// What a client asks for when it resumes a link (contract §4).
struct ResumeRequest: Sendable {
    var token: String
    var lastSeq: Int
}

extension ResumeRequest {
    /// Contract §4: `resume_token` (at most 128 bytes) asks to resume, with `last_seq` (a
    /// non-negative integer, default 0); nil when no resume is asked for.
    static func requested(token: RequestField<String>, lastSeq: RequestField<Int>) throws(RelayHTTPError) -> Self? {
        let resumeToken: String
        switch token {
        case .absent: return nil
        case .malformed: throw RelayHTTPError(.badRequest, "resume_token is malformed")
        case .present(let value):
            guard value.utf8.count <= 128 else { throw RelayHTTPError(.badRequest, "resume_token is malformed") }
            resumeToken = value
        }
        switch lastSeq {
        case .absent: return Self(token: resumeToken, lastSeq: 0)
        case .present(let value) where value >= 0: return Self(token: resumeToken, lastSeq: value)
        case .present, .malformed: throw RelayHTTPError(.badRequest, "last_seq must be a non-negative integer")
        }
    }
}
