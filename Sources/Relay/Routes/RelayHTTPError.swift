/// An HTTP error answered as `{"detail": ...}` with one status (routes and upgrade refusals).
import DeviceAuth
import Foundation
import HTTPTypes
import Hummingbird
import RelayCore
import RelayWebSocket

/// An HTTP error answered as `{"detail": "..."}` with one status.
public struct RelayHTTPError: HTTPResponseError, Sendable {
    public let status: HTTPResponse.Status
    public let detail: String
    public let headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ detail: String, headers: HTTPFields = [:]) {
        self.status = status
        self.detail = detail
        self.headers = headers
    }

    init(_ failure: AuthFailure) {
        switch failure.status {
        case .unauthenticated: self.init(.unauthorized, failure.detail)
        case .forbidden: self.init(.forbidden, failure.detail)
        case .unavailable: self.init(.serviceUnavailable, failure.detail, headers: [.retryAfter: "5"])
        case .tooMany: self.init(.tooManyRequests, failure.detail, headers: [.retryAfter: "5"])
        }
    }

    /// A relay shutting down takes no new link: the client connects again, to the next process.
    static let restarting = RelayHTTPError(.serviceUnavailable, "The relay is restarting; connect again shortly", headers: [.retryAfter: "1"])

    /// The store a fleet shares does not answer: a device cannot be admitted until it does.
    static let storeUnavailable = RelayHTTPError(
        .serviceUnavailable,
        "The relay cannot reach its store; connect again shortly",
        headers: [.retryAfter: "2"]
    )

    /// `{"detail": "..."}`
    var body: String {
        var body = "{\"detail\":"
        JSONValue.writeString(detail, to: &body)
        return body + "}"
    }

    /// The same answer to a WebSocket upgrade.
    var refusal: UpgradeRefusal {
        UpgradeRefusal(status: status, headers: headers, body: body)
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
