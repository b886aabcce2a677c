/// The live links' kept messages as an append-only log beside the SQLite file: cheap to write at the rate messages flow, compacted from memory.
import Foundation
import Synchronization

/// Kept (unacked) messages change at the rate messages flow, so they do not go into SQLite's
/// B-tree (measured: a row per message and its delete doubled the relay's CPU per message).
/// They go to `<RELAY_DB>-outbox`, one append per batch: records of messages, of ranges
/// forgotten (acked or dropped) and of links that ended. Replaying the records in order gives
/// every live link's kept messages; replaying one twice changes nothing, so a batch that is
/// written again after a failure is harmless. A torn last record (a kill mid-write) is ignored.
/// The log grows until the relay replaces it with a snapshot of what its links keep
/// (`replace(with:)`). Like SQLite's WAL with `synchronous = NORMAL`, it survives the process,
/// not the machine: nothing is fsynced per batch.
final class OutboxLog: Sendable {
    private static let magic = Array("RELAYOB1".utf8)

    private enum Kind: UInt8 {
        case message = 1
        case forgotten = 2
        case ended = 3
        /// A link's client's messages are done up to a `cseq` (contract §11).
        case cseq = 4
    }

    /// What replaying the log gives: every live link's kept messages (in seq order) and `cseq` mark.
    struct Contents {
        var messages: [String: [StoredMessage]] = [:]
        var marks: [String: Int] = [:]
    }

    let path: String
    private struct File {
        var descriptor: Int32 = -1
        var size = 0
    }

    private let file = Mutex(File())

    init(path: String) {
        self.path = path
    }

    deinit {
        file.withLock { if $0.descriptor >= 0 { close($0.descriptor) } }
    }

    /// Bytes in the log now (0 before the first write of this process).
    var size: Int { file.withLock { $0.size } }

    /// Appends the records of `batches`, in order.
    func append(_ batches: [LiveStateBatch]) throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(batches.reduce(0) { total, batch in
            batch.messages.reduce(total) { $0 + 64 + $1.message.text.utf8.count } + 64 * (batch.forgotten.count + batch.endedLinks.count + batch.marks.count)
        })
        for batch in batches { Self.encode(batch, into: &bytes) }
        guard !bytes.isEmpty else { return }
        try file.withLock { file in
            if file.descriptor < 0 { file = try Self.open(path) }
            try Self.write(bytes, to: file.descriptor)
            file.size += bytes.count
        }
    }

    /// Replaces the log with `snapshot` (every live link's kept messages), written beside it
    /// first and renamed over it, so a kill at any point leaves one whole log.
    func replace(with snapshot: [String: [StoredMessage]], marks: [(linkID: String, cseq: Int)]) throws {
        var bytes = Self.magic
        for (linkID, messages) in snapshot {
            for message in messages { Self.encode(.message, linkID, message: message, into: &bytes) }
        }
        for (linkID, cseq) in marks { Self.encode(mark: cseq, linkID, into: &bytes) }
        try file.withLock { file in
            let fresh = path + ".new"
            let descriptor = Foundation.open(fresh, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw Self.failure("cannot create \(fresh)") }
            do {
                try Self.write(bytes, to: descriptor)
            } catch {
                close(descriptor)
                throw error
            }
            guard rename(fresh, path) == 0 else {
                close(descriptor)
                throw Self.failure("cannot rename \(fresh) to \(path)")
            }
            if file.descriptor >= 0 { close(file.descriptor) }
            // Opened for writing at its end: appends follow the snapshot.
            lseek(descriptor, 0, SEEK_END)
            file = File(descriptor: descriptor, size: bytes.count)
        }
    }

    /// Every link's kept messages and `cseq` mark as the log has them.
    static func read(path: String) -> Contents {
        guard let data = FileManager.default.contents(atPath: path), data.count >= magic.count, Array(data.prefix(magic.count)) == magic else {
            return Contents()
        }
        var kept: [String: [Int: String]] = [:]
        var marks: [String: Int] = [:]
        var reader = Reader(bytes: [UInt8](data), offset: magic.count)
        reading: while let kindByte = reader.byte(), let kind = Kind(rawValue: kindByte), let linkID = reader.string16() {
            switch kind {
            case .message:
                guard let seq = reader.int64(), let text = reader.string32() else { break reading }
                kept[linkID, default: [:]][seq] = text
            case .forgotten:
                guard let from = reader.int64(), let before = reader.int64() else { break reading }
                kept[linkID] = kept[linkID]?.filter { $0.key < from || $0.key >= before }
            case .ended:
                kept[linkID] = nil
                marks[linkID] = nil
            case .cseq:
                guard let cseq = reader.int64() else { break reading }
                marks[linkID] = max(marks[linkID] ?? 0, cseq)
            }
        }
        return Contents(messages: sorted(kept), marks: marks)
    }

    private static func sorted(_ kept: [String: [Int: String]]) -> [String: [StoredMessage]] {
        kept.mapValues { $0.sorted { $0.key < $1.key }.map { StoredMessage(seq: $0.key, text: $0.value) } }.filter { !$0.value.isEmpty }
    }

    // MARK: Encoding

    private static func encode(_ batch: LiveStateBatch, into bytes: inout [UInt8]) {
        // Forgotten ranges before new messages: a link that renumbered what it kept forgets
        // everything and writes it anew in one batch.
        for (linkID, from, before) in batch.forgotten {
            encode(.forgotten, linkID, into: &bytes)
            append(Int64(from), to: &bytes)
            append(Int64(clamping: before), to: &bytes)
        }
        for (linkID, message) in batch.messages { encode(.message, linkID, message: message, into: &bytes) }
        // After the messages: a mark stands for what its messages caused, here and on the link.
        for (linkID, cseq) in batch.marks { encode(mark: cseq, linkID, into: &bytes) }
        for linkID in batch.endedLinks { encode(.ended, linkID, into: &bytes) }
    }

    private static func encode(mark cseq: Int, _ linkID: String, into bytes: inout [UInt8]) {
        encode(.cseq, linkID, into: &bytes)
        append(Int64(cseq), to: &bytes)
    }

    private static func encode(_ kind: Kind, _ linkID: String, message: StoredMessage? = nil, into bytes: inout [UInt8]) {
        bytes.append(kind.rawValue)
        let id = linkID.utf8.prefix(Int(UInt16.max))
        append(UInt16(id.count), to: &bytes)
        bytes.append(contentsOf: id)
        if let message {
            append(Int64(message.seq), to: &bytes)
            var text = message.text
            text.withUTF8 { utf8 in
                append(UInt32(utf8.count), to: &bytes)
                bytes.append(contentsOf: utf8)
            }
        }
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset: Int

        mutating func take(_ count: Int) -> ArraySlice<UInt8>? {
            guard count >= 0, offset + count <= bytes.count else { return nil }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }

        mutating func byte() -> UInt8? { take(1)?.first }

        mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard let slice = take(MemoryLayout<T>.size) else { return nil }
            return slice.reversed().reduce(T.zero) { ($0 << 8) | T($1) }
        }

        mutating func int64() -> Int? { integer(Int64.self).map(Int.init) }

        mutating func string16() -> String? {
            guard let count = integer(UInt16.self), let slice = take(Int(count)) else { return nil }
            return String(decoding: slice, as: UTF8.self)
        }

        mutating func string32() -> String? {
            guard let count = integer(UInt32.self), let slice = take(Int(count)) else { return nil }
            return String(decoding: slice, as: UTF8.self)
        }
    }

    // MARK: The file

    private static func open(_ path: String) throws -> File {
        let descriptor = Foundation.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("cannot open \(path)") }
        var size = Int(lseek(descriptor, 0, SEEK_END))
        if size == 0 {
            try write(magic, to: descriptor)
            size = magic.count
        }
        return File(descriptor: descriptor, size: size)
    }

    private static func write(_ bytes: [UInt8], to descriptor: Int32) throws {
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress! + written, bytes.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                throw failure("writing the outbox log failed: \(String(cString: strerror(errno)))")
            }
            written += result
        }
    }

    private static func failure(_ description: String) -> StoreError {
        StoreError(description)
    }
}
