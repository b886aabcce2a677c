/// `RELAY_LOG_FORMAT=json`: one JSON object per log line, for log collectors.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import RelayCore
import Synchronization

/// Writes each log event to standard error as one JSON object on one line:
/// `{"time":"2026-11-29T09:12:03.123Z","level":"info","label":"relay","message":"...","source":"Relay",`
/// followed by the metadata under the same keys the text format shows (`link.id`, `session.id`...).
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, JSONValue)] = [
            ("time", .string(Self.timestamp())),
            ("level", .string(event.level.rawValue)),
            ("label", .string(label)),
            ("message", .string(event.message.description)),
            ("source", .string(event.source)),
        ]
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for key in merged.keys.sorted() where !["time", "level", "label", "message", "source"].contains(key) {
            fields.append((key, Self.json(merged[key]!)))
        }
        var line = "{"
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { line += "," }
            JSONValue.writeString(key, to: &line)
            line += ":"
            value.write(to: &line)
        }
        line += "}\n"
        StandardError.write(line)
    }

    private static func json(_ value: Logger.MetadataValue) -> JSONValue {
        switch value {
        case .string(let text): .string(text)
        case .stringConvertible(let convertible): .string(convertible.description)
        case .array(let values): .array(values.map(json))
        case .dictionary(let entries): .object(entries.mapValues(json))
        }
    }

    /// Now, as RFC 3339 UTC with milliseconds.
    static func timestamp() -> String {
        Date.ISO8601FormatStyle(includingFractionalSeconds: true).format(Date())
    }
}

/// The process's standard error, where every log line goes: each line written whole, whichever
/// thread logs it.
enum StandardError {
    private static let output = Mutex(())

    static func write(_ line: String) {
        output.withLock { _ in
            var bytes = Array(line.utf8)
            bytes.withUnsafeMutableBytes { buffer in
                var written = 0
                while written < buffer.count {
                    let count = Glibc.write(2, buffer.baseAddress! + written, buffer.count - written)
                    if count <= 0 { break }
                    written += count
                }
            }
        }
    }
}
