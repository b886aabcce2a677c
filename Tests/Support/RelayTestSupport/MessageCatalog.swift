/// Every shape of message the relay sent a test client, kept for scripts/checks/protocol-check.
import Foundation
import Synchronization

/// Records one example of each shape (its `type` and its set of fields) of the messages the
/// relay sends test clients, one JSON object per line in `.build/relay-messages.jsonl` (or
/// `RELAY_MESSAGE_CATALOG`). `scripts/checks/protocol-check` validates each against docs/asyncapi.yaml.
public enum MessageCatalog {
    private static let seen = Mutex<Set<String>>([])
    private static let path: String = {
        if let path = ProcessInfo.processInfo.environment["RELAY_MESSAGE_CATALOG"] {
            try? FileManager.default.removeItem(atPath: path)
            return path
        }
        // This file is Tests/Support/RelayTestSupport/MessageCatalog.swift in the package.
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let path = package.appendingPathComponent(".build/relay-messages.jsonl").path
        // What an earlier run recorded may be of an older relay.
        try? FileManager.default.removeItem(atPath: path)
        return path
    }()

    /// Records `text` (a message from the relay) if its shape is new.
    public static func record(_ text: String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], let type = object["type"] as? String
        else { return }
        let shape = ([type] + object.keys.sorted()).joined(separator: ",")
        guard seen.withLock({ $0.insert(shape).inserted }) else { return }
        let line = Data((text + "\n").utf8)
        seen.withLock { _ in
            if let handle = FileHandle(forWritingAtPath: path) {
                handle.seekToEndOfFile()
                handle.write(line)
                try? handle.close()
            } else {
                FileManager.default.createFile(atPath: path, contents: line)
            }
        }
    }
}
