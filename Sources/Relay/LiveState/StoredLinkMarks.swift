/// What the store has of one link, and what to hand it next: pure rules the link runs under its lock.
import DeviceAuth
import Registry
import RelayCore

/// What the store has of one link's state: whether its row is written, which of its messages
/// were considered (written, or acked before their turn) and which may be stored. The link
/// holds it beside its machine and runs these rules under its own lock; the journal collects
/// what they add to a batch.
struct StoredLinkMarks: Sendable {
    /// The journal was told of a change and has not asked yet.
    private(set) var listed = false
    /// The link's row is written and current.
    var row = false
    /// Messages up to this seq were considered.
    private var through = 0
    /// Messages from this seq on may be in the store.
    private var from = 1
    /// Every stored message is to go (a restored link renumbered what it kept).
    private var rewrite = false
    /// The client's messages up to this `cseq` are done in the store's eyes.
    private var cseq = 0

    init() {}

    /// A link restored from the store: its row and what it keeps are there.
    init(restored machine: Link.Machine) {
        let (frames, firstKept) = machine.keptFrames(after: 0)
        row = true
        through = frames.last?.seq ?? firstKept - 1
        from = frames.first?.seq ?? firstKept
        cseq = machine.client.safe
    }

    /// Whether the journal is to be told (once until it asks).
    mutating func list() -> Bool {
        guard !listed else { return false }
        listed = true
        return true
    }

    /// A restored link's first transport attached: what it keeps may have been renumbered.
    mutating func rewriteAll() { rewrite = true }

    /// Adds what the store lacks of the link to `batch`: its row (`record`) when new or
    /// changed, the kept messages not yet written, the range of stored ones since acked or
    /// dropped, the client's `cseq` done since; or, once it ended, that it is gone. Returns
    /// the `cseq` mark it added.
    mutating func journal(_ machine: Link.Machine, id: String, into batch: inout LiveStateBatch, record: () -> StoredLink) -> Int? {
        listed = false
        if machine.isEnded {
            if row || through >= from { batch.endedLinks.append(id) }
            self = StoredLinkMarks()
            return nil
        }
        if !row {
            batch.links.append(record())
            row = true
        }
        if rewrite {
            batch.forgotten.append((id, 0, .max))
            rewrite = false
            through = 0
        }
        let (frames, firstKept) = machine.keptFrames(after: through)
        if firstKept > from {
            if through >= from { batch.forgotten.append((id, from, min(firstKept, through + 1))) }
            from = firstKept
        }
        for frame in frames { batch.messages.append((id, StoredMessage(seq: frame.seq, text: frame.text))) }
        through = machine.upcomingSeq - 1
        // After the messages: what the client's messages caused (on this link too) is in the batch.
        let done = machine.client.done
        guard done > cseq else { return nil }
        cseq = done
        batch.marks.append((id, done))
        return done
    }

    /// Adds the link's kept messages and its stored `cseq` mark to `batch`'s snapshot (nothing
    /// once it ended): the store now has all of them. Returns their bytes.
    mutating func snapshot(_ machine: Link.Machine, id: String, into batch: inout LiveStateBatch) -> Int {
        guard !machine.isEnded else { return 0 }
        let (frames, firstKept) = machine.keptFrames(after: 0)
        rewrite = false
        from = firstKept
        through = machine.upcomingSeq - 1
        if cseq > 0 { batch.marks.append((id, cseq)) }
        guard !frames.isEmpty else { return 0 }
        batch.snapshot?[id] = frames.map { StoredMessage(seq: $0.seq, text: $0.text) }
        return frames.reduce(0) { $0 + $1.text.utf8.count }
    }
}

extension StoredLink {
    /// The row of a link whose rules are `machine`, as the store keeps it.
    init(id: String, tokenHash: [UInt8], party: Party, principal: String, machine: Link.Machine, app: AppIdentity?) {
        self.init(
            id: id,
            tokenHash: tokenHash,
            party: party.rawValue,
            principal: principal,
            tokenValidUntil: machine.tokenValidUntil,
            tokenExpiresAt: app?.expiresAt,
            tokenDevices: app?.devices.map { $0.sorted() },
            attached: machine.isAttached,
            // What a node the link moves to drops as duplicates: what was handled here for good.
            // A message still being handled as the move begins (a transport reads on its own
            // thread) counts as not taken: its client sends it again there, and if it got through
            // here too, the receiving client ignores its repeated peer_cseq.
            cseq: machine.client.done,
            restoredThrough: machine.restoredThrough
        )
    }
}
