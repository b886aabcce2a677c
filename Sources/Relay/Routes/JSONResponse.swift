/// JSON request bodies and responses for the HTTP routes.
import Foundation
import HTTPTypes
import Hummingbird
import RelayCore

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

    /// An ISO 8601 UTC time with milliseconds (`2026-11-21T20:00:00.123Z`), or null.
    static func preciseTime(_ date: Date?) -> JSONValue {
        date.map { .string(Date.ISO8601FormatStyle(includingFractionalSeconds: true).format($0)) } ?? .null
    }

    static func int(_ value: Int) -> JSONValue {
        .number(Double(value))
    }
}

extension Request {
    /// The body as a JSON object, at most `limit` bytes (else 413); an empty body is `[:]` unless
    /// `required`; anything else is a 400 naming `example`.
    func jsonObject(upTo limit: Int, required: Bool = true, example: String? = nil) async throws -> [String: JSONValue] {
        let body: ByteBuffer
        do {
            body = try await self.body.collect(upTo: limit)
        } catch {
            throw RelayHTTPError(.contentTooLarge, "Body must be at most \(limit) bytes")
        }
        if body.readableBytes == 0, !required { return [:] }
        guard let text = String(validating: body.readableBytesView, as: UTF8.self), let object = try? JSONParser.object(text) else {
            throw RelayHTTPError(.badRequest, "Body must be a JSON object\(example.map { " such as \($0)" } ?? "")")
        }
        return object
    }
}
