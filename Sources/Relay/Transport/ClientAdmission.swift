/// One admission for every transport: the connection-attempt limit, the client's credentials, and what it asks to resume.
import Hummingbird
import Logging
import RelayCore

/// How a client gets onto a link, decided the same way for a WebSocket upgrade and for
/// `POST /api/link` (contract §1, §4, §5): connection attempts are limited per client address,
/// then the app's token or the device's signature is checked, and a resume request is read
/// with the same rules wherever the transport carries it.
struct ClientAdmission: Sendable {
    let authenticator: ClientAuthenticator
    let attempts: RateLimiter

    /// The client, as `party`, from `remoteIP`; a refusal is the HTTP answer to give.
    func admit(_ request: Request, as party: Party, from remoteIP: String?, logger: Logger) async throws(RelayHTTPError) -> ClientIdentity {
        if case .denied(let retryAfter) = attempts.take(remoteIP ?? "unknown") {
            logger.info("Too many connection attempts", metadata: ["client.ip": "\(remoteIP ?? "unknown")"])
            throw RelayHTTPError(.tooManyRequests, "Too many connection attempts; retry in \(retryAfter) s", headers: [.retryAfter: String(retryAfter)])
        }
        switch party {
        case .app: return .app(try authenticator.app(request, logger: logger))
        case .device: return .device(try await authenticator.device(request, logger: logger))
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
