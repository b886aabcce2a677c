/// A link's outgoing messages as a pure value: `seq` numbering, what is kept until acked, what is unsent, and the bounds.
import DequeModule

/// The messages of one link on their way to the client (contract §4), as a value with no I/O:
/// each is numbered with the link's next `seq` and kept until the client acks it, so a resumed
/// transport can get what the last one missed; a cursor says which were handed to the current
/// transport.
///
/// Bounds and policies:
/// - Kept (unacked) messages: at most `maxMessages` and `maxBytes`; past that the oldest are
///   dropped, and a resume that needs them cannot be complete (`rewind` says so).
/// - Unsent messages: past the same bounds the reader is too slow (`append` says so; the
///   owner drops that transport).
public struct OutboxBuffer: Sendable {
    /// One message as the client receives it: its `seq` and its JSON text.
    public struct Frame: Sendable, Equatable {
        public var seq: Int
        public var text: String

        @inlinable public init(seq: Int, text: String) {
            self.seq = seq
            self.text = text
        }
    }

    public let maxMessages: Int
    public let maxBytes: Int
    @usableFromInline var kept: Deque<Frame> = []
    @usableFromInline var keptBytes = 0
    /// The seq the next message gets.
    @usableFromInline var nextSeq = 1
    /// Seq of the next message to hand to a transport.
    @usableFromInline var sendCursor = 1
    /// Bytes of the kept messages from `sendCursor` on.
    @usableFromInline var unsentBytes = 0

    /// After a restore from a store: the highest seq the store knew. The client may hold
    /// messages after it (handed out, not yet stored, when the relay was killed); until the
    /// first transport attaches, the link's new messages are numbered as if it did not.
    @usableFromInline var storedThrough: Int?

    public init(maxMessages: Int, maxBytes: Int) {
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
    }

    /// A link's messages as a store kept them (in seq order, consecutive): none counts as
    /// handed out. Those after `storedThrough` were queued since an earlier restore. The first resume from ahead of them (`rewind`) is complete: the client
    /// already holds everything the store knew, and what was queued since the restore is
    /// renumbered to follow the client's `last_seq`, so numbering stays gapless for it.
    public init(maxMessages: Int, maxBytes: Int, restoring frames: [Frame], storedThrough: Int) {
        self.init(maxMessages: maxMessages, maxBytes: maxBytes)
        for frame in frames {
            // Only a gapless run can be replayed: after a gap, what came before is useless.
            if let last = kept.last, frame.seq != last.seq + 1 {
                kept.removeAll()
                keptBytes = 0
            }
            kept.append(frame)
            keptBytes += frame.text.utf8.count
        }
        while kept.count > maxMessages || keptBytes > maxBytes, let oldest = kept.popFirst() {
            keptBytes -= oldest.text.utf8.count
        }
        nextSeq = max(storedThrough, frames.last?.seq ?? 0) + 1
        sendCursor = kept.first?.seq ?? nextSeq
        unsentBytes = keptBytes
        self.storedThrough = storedThrough
    }

    /// Restored from a store and not resumed since: the highest seq the store knew then (what
    /// is kept after it was queued since the restore). A link moving to another node, or
    /// stored again, carries it, so its first resume there renumbers what it must.
    public var restoredThrough: Int? { storedThrough }

    /// Numbers a message with the next `seq` (`text` makes its frame for that seq) and keeps
    /// it, dropping the oldest kept ones past the bounds. True when the unsent messages are now
    /// past the bounds: the transport is not keeping up.
    @inlinable
    public mutating func append(_ text: (Int) -> String) -> Bool {
        let frame = Frame(seq: nextSeq, text: text(nextSeq))
        let bytes = frame.text.utf8.count
        kept.append(frame)
        keptBytes += bytes
        unsentBytes += bytes
        nextSeq += 1
        let overBound = unsentOverBound
        dropPastBounds()
        return overBound
    }

    /// Numbers a message ahead of every unsent one (contract §12: an e-stop jumps the queue):
    /// it takes the seq of the first unsent message, and each unsent message moves one seq on
    /// (O(unsent messages), at most `maxMessages`). No transport was handed those, so the client
    /// sees seqs in order as ever; what was handed out keeps its seq. Returns the first seq
    /// renumbered (a store holding the kept messages writes them again from there) and whether
    /// the unsent messages are past the bounds.
    public mutating func appendAhead(_ text: (Int) -> String) -> (renumberedFrom: Int, overBound: Bool) {
        let seq = max(sendCursor, kept.first?.seq ?? nextSeq)
        let unsent = kept.firstIndex { $0.seq >= seq } ?? kept.endIndex
        let ahead = Frame(seq: seq, text: text(seq))
        var moved = [ahead]
        var added = ahead.text.utf8.count
        for frame in kept[unsent...] {
            let renumbered = Frame(seq: frame.seq + 1, text: OutboundMessage.renumbered(frame.text, to: frame.seq + 1))
            added += renumbered.text.utf8.count - frame.text.utf8.count
            moved.append(renumbered)
        }
        kept.removeSubrange(unsent...)
        kept.append(contentsOf: moved)
        keptBytes += added
        unsentBytes += added
        nextSeq += 1
        let overBound = unsentOverBound
        dropPastBounds()
        return (seq, overBound)
    }

    /// Past the bounds the oldest kept messages go, sent or not (with unsent ones among them
    /// the owner drops the transport: `unsentOverBound` said so). A message put ahead may be
    /// one of them: what must reach the client whatever happens (an e-stop) is kept by its
    /// owner too and sent again on the resume.
    @inlinable
    mutating func dropPastBounds() {
        while kept.count > maxMessages || keptBytes > maxBytes, let oldest = kept.popFirst() {
            let bytes = oldest.text.utf8.count
            keptBytes -= bytes
            if oldest.seq >= sendCursor {
                unsentBytes -= bytes
                sendCursor = oldest.seq + 1
            }
        }
    }

    @inlinable
    var unsentOverBound: Bool {
        guard let first = kept.first else { return false }
        return nextSeq - max(sendCursor, first.seq) > maxMessages || unsentBytes > maxBytes
    }

    /// Whether some kept message has not been handed to a transport.
    @inlinable
    public var hasUnsent: Bool {
        guard let last = kept.last else { return false }
        return last.seq >= sendCursor
    }

    /// Hands every unsent message to the transport, in order.
    @inlinable
    public mutating func takeUnsent() -> [Frame] {
        guard hasUnsent, let first = kept.first else { return [] }
        let frames = Array(kept[max(0, sendCursor - first.seq)...])
        sendCursor = nextSeq
        unsentBytes = 0
        return frames
    }

    /// The client has processed everything up to `seq`: those need not be kept. Only what was
    /// handed to a transport can have been processed.
    @inlinable
    public mutating func acknowledge(through seq: Int) {
        while let first = kept.first, first.seq <= seq, first.seq < sendCursor {
            kept.removeFirst()
            keptBytes -= first.text.utf8.count
        }
    }

    /// A new transport takes over. With `lastSeq` (a resume), it gets every kept message after
    /// it (an implicit ack of everything up to it); false when that replay cannot be complete
    /// (messages after `lastSeq` were dropped, or `lastSeq` is in the future). Without, it gets
    /// what no transport was handed yet.
    public mutating func rewind(resumingAfter lastSeq: Int?) -> Bool {
        if let through = storedThrough {
            storedThrough = nil
            if let lastSeq, lastSeq > through, lastSeq < Int(Int32.max) {
                continueAfter(lastSeq, storedThrough: through)
                return true
            }
        }
        let resumeFrom: Int
        if let lastSeq {
            let firstAvailable = kept.first?.seq ?? nextSeq
            guard lastSeq >= 0, lastSeq < nextSeq, lastSeq + 1 >= firstAvailable else { return false }
            resumeFrom = lastSeq + 1
            while let first = kept.first, first.seq <= lastSeq {
                kept.removeFirst()
                keptBytes -= first.text.utf8.count
            }
        } else {
            resumeFrom = sendCursor
        }
        sendCursor = resumeFrom
        unsentBytes = kept.reduce(0) { $1.seq >= resumeFrom ? $0 + $1.text.utf8.count : $0 }
        return true
    }

    /// The client of a restored link holds messages up to `lastSeq`, past what the store
    /// knew: it has everything stored; what was queued since the restore follows `lastSeq`.
    mutating func continueAfter(_ lastSeq: Int, storedThrough through: Int) {
        var renumbered = Deque<Frame>()
        var seq = lastSeq + 1
        keptBytes = 0
        for frame in kept where frame.seq > through {
            let moved = Frame(seq: seq, text: OutboundMessage.renumbered(frame.text, to: seq))
            keptBytes += moved.text.utf8.count
            renumbered.append(moved)
            seq += 1
        }
        kept = renumbered
        nextSeq = seq
        sendCursor = lastSeq + 1
        unsentBytes = keptBytes
    }

    /// The kept messages after `seq`, in order (the ones a store does not have yet).
    public func keptFrames(after seq: Int) -> [Frame] {
        guard let first = kept.first else { return [] }
        return Array(kept.dropFirst(max(0, seq + 1 - first.seq)))
    }

    /// The seq of the oldest kept message (the next one's when none is kept): everything
    /// before it was acked or dropped.
    public var firstKeptSeq: Int { kept.first?.seq ?? nextSeq }

    /// Forgets what was already handed out (the link ended: only the unsent rest still goes).
    public mutating func dropSent() {
        while let first = kept.first, first.seq < sendCursor {
            kept.removeFirst()
            keptBytes -= first.text.utf8.count
        }
    }

    /// Forgets everything.
    public mutating func removeAll() {
        kept.removeAll()
        keptBytes = 0
        unsentBytes = 0
    }

    /// The seq the next message will get.
    public var upcomingSeq: Int { nextSeq }

    /// How many messages and bytes are kept.
    public var keptCount: (messages: Int, bytes: Int) { (kept.count, keptBytes) }
}
