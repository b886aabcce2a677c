import Foundation
import HTTPTypes
import Hummingbird

extension Response {
    /// A JSON answer built from a `JSONValue` (keys sorted).
    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: value.serialized))
        )
    }
}

extension JSONValue {
    /// An ISO 8601 UTC time (`2026-11-21T20:00:00Z`), or null.
    static func time(_ date: Date?) -> JSONValue {
        date.map { .string($0.formatted(.iso8601)) } ?? .null
    }

    static func int(_ value: Int) -> JSONValue {
        .number(Double(value))
    }
}
