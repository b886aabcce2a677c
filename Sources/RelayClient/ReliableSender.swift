/// What a client sends reliably: numbered, kept until acked, paced, sent again first after a resume.
import DequeModule
import RelayCore

/// The sending half of a client's link (contract §10): each message is numbered with `cseq`
/// and kept until the relay acks it; frames go out as the pace allows (contract §5: the relay
/// drops what exceeds its per-link rate); after a resume everything not acked goes again
/// first, in order. Pure: the client hands it the time and writes the frames it releases.
struct ReliableSender {
    private(set) var cseq = 0
    /// Numbered messages not acked yet, oldest first: (cseq, text).
    private var unacked: Deque<(cseq: Int, text: String)> = []
    /// Frames waiting for the pace, oldest first.
    private var outgoing: Deque<String> = []
    private var pace: TokenBucket<ContinuousClock.Instant>
    /// While frames wait for the pace: how long until the next may go (the pacer sleeps that long).
    var paceWait: Duration?

    init(burst: Int, perSecond: Double) {
        pace = TokenBucket(burst: burst, perSecond: perSecond)
    }

    var unacknowledged: Int { unacked.count }

    /// `fields` as a message of `type` with the next `cseq`, kept until acked.
    mutating func number(_ type: String, _ fields: [String: JSONValue]) -> (cseq: Int, text: String) {
        cseq += 1
        var message = fields
        message["type"] = .string(type)
        message["cseq"] = .number(Double(cseq))
        let text = JSONValue.object(message).serialized
        unacked.append((cseq, text))
        return (cseq, text)
    }

    /// The relay has everything up to `cseq`; true when nothing is left unacked.
    mutating func acked(through cseq: Int) -> Bool {
        unacked.removeFirst(unacked.prefix { $0.cseq <= cseq }.count)
        return unacked.isEmpty
    }

    /// The link could not be resumed: what it had not acked is gone.
    mutating func forgetUnacked() {
        unacked.removeAll()
    }

    /// A new socket serves the link: what was not acked goes first, in order (a higher cseq
    /// ahead of a lower one would make that one a duplicate); what waited for the old socket
    /// is among it.
    mutating func resendUnacked() {
        outgoing = Deque(unacked.map(\.text))
        paceWait = nil
    }

    /// `text` waits its turn behind what already waits.
    mutating func enqueue(_ text: String) {
        outgoing.append(text)
    }

    /// The frames the pace lets go now, in order; `paceWait` says how long until the next may
    /// go when some still wait.
    mutating func release(now: ContinuousClock.Instant) -> [String] {
        var frames: [String] = []
        while let text = outgoing.first {
            guard pace.take(now: now) else {
                paceWait = pace.durationUntilToken(at: now)
                return frames
            }
            outgoing.removeFirst()
            frames.append(text)
        }
        paceWait = nil
        return frames
    }
}
