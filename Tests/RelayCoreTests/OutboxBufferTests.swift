/// A link's outgoing messages without sockets: numbering, acks, replay on resume, and the bounds.
import RelayCore
import Testing

@Suite struct OutboxBufferTests {
    static func frame(_ seq: Int) -> String { #"{"type":"m","seq":\#(seq)}"# }

    static func filled(_ count: Int, maxMessages: Int = 256, maxBytes: Int = 1 << 20) -> OutboxBuffer {
        var buffer = OutboxBuffer(maxMessages: maxMessages, maxBytes: maxBytes)
        for _ in 0..<count { _ = buffer.append(frame) }
        return buffer
    }

    @Test func messagesAreNumberedFromOneAndHandedOutOnceInOrder() {
        var buffer = Self.filled(3)
        let first = buffer.takeUnsent()
        let again = buffer.takeUnsent()
        #expect(first.map(\.seq) == [1, 2, 3] && again.isEmpty && !buffer.hasUnsent)
        _ = buffer.append(Self.frame)
        let fourth = buffer.takeUnsent()
        #expect(fourth == [.init(seq: 4, text: Self.frame(4))])
    }

    @Test func anAckForgetsOnlyWhatWasHandedOut() {
        var buffer = Self.filled(3)
        _ = buffer.takeUnsent()
        _ = buffer.append(Self.frame)
        // The client cannot have processed 4: it was never handed out.
        buffer.acknowledge(through: 10)
        #expect(buffer.keptCount.messages == 1)
        let rest = buffer.takeUnsent()
        #expect(rest.map(\.seq) == [4])
    }

    @Test func aResumeReplaysEverythingAfterTheClientsLastSeq() {
        var buffer = Self.filled(5)
        _ = buffer.takeUnsent()
        let resumed = buffer.rewind(resumingAfter: 2)
        let replay = buffer.takeUnsent()
        #expect(resumed && replay.map(\.seq) == [3, 4, 5])
        // Up to 2 counts as acked.
        #expect(buffer.keptCount.messages == 3)
        // A new transport without a resume gets only what nobody was handed.
        _ = buffer.append(Self.frame)
        let fresh = buffer.rewind(resumingAfter: nil)
        let unsent = buffer.takeUnsent()
        #expect(fresh && unsent.map(\.seq) == [6])
    }

    @Test func aResumeThatCannotBeCompleteIsRefused() {
        // At most 3 kept: 1 and 2 are gone.
        var buffer = Self.filled(5, maxMessages: 3)
        let afterOne = buffer.rewind(resumingAfter: 1)
        let fromTheFuture = buffer.rewind(resumingAfter: 6)
        let negative = buffer.rewind(resumingAfter: -1)
        #expect(!afterOne && !fromTheFuture && !negative)
        let afterTwo = buffer.rewind(resumingAfter: 2)
        let afterFive = buffer.rewind(resumingAfter: 5)
        let nothingLeft = buffer.takeUnsent()
        #expect(afterTwo && afterFive && nothingLeft.isEmpty)
    }

    @Test func keptMessagesAreBoundedByCountAndBytesOldestFirst() {
        var byCount = Self.filled(300)
        let unsent = byCount.takeUnsent()
        #expect(byCount.keptCount.messages == 256 && unsent.first?.seq == 45)
        let size = Self.frame(1).utf8.count
        let byBytes = Self.filled(9, maxBytes: 4 * size)
        #expect(byBytes.keptCount == (4, 4 * size))
    }

    @Test func aReaderThatFallsBehindTheBoundsIsReported() {
        var buffer = OutboxBuffer(maxMessages: 4, maxBytes: 1 << 20)
        var reported: [Bool] = []
        for _ in 0..<5 { reported.append(buffer.append(Self.frame)) }
        #expect(reported == [false, false, false, false, true], "a fifth unsent message is past the bound")
        // A reader that keeps up is never reported.
        var keepingUp = OutboxBuffer(maxMessages: 4, maxBytes: 1 << 20)
        var everReported = false
        for _ in 0..<100 {
            everReported = keepingUp.append(Self.frame) || everReported
            let taken = keepingUp.takeUnsent()
            keepingUp.acknowledge(through: taken.last!.seq)
        }
        #expect(!everReported && keepingUp.keptCount.messages == 0)
    }

    @Test func anEndedLinkKeepsOnlyWhatItsTransportHasNotWrittenYet() {
        var buffer = Self.filled(3)
        _ = buffer.takeUnsent()
        _ = buffer.append(Self.frame)
        buffer.dropSent()
        let last = buffer.takeUnsent()
        #expect(buffer.keptCount.messages == 1 && last.map(\.seq) == [4])
        buffer.removeAll()
        #expect(buffer.keptCount.messages == 0 && !buffer.hasUnsent)
    }

    // MARK: Restored from a store (contract §11)

    static func stored(_ seqs: ClosedRange<Int>) -> [OutboxBuffer.Frame] {
        seqs.map { OutboxBuffer.Frame(seq: $0, text: frame($0)) }
    }

    @Test func aRestoredLinkReplaysWhatTheStoreKeptAfterTheClientsLastSeqAndNumbersOn() {
        var buffer = OutboxBuffer(maxMessages: 256, maxBytes: 1 << 20, restoring: Self.stored(4...6), storedThrough: 6)
        _ = buffer.append(Self.frame)
        let resumed = buffer.rewind(resumingAfter: 4)
        let replay = buffer.takeUnsent()
        #expect(resumed && replay.map(\.seq) == [5, 6, 7])
        #expect(replay.last?.text == Self.frame(7))
    }

    @Test func aClientAheadOfTheStoreKeepsAGaplessNumbering() {
        // The store had up to 6; the client had processed 9 (7 to 9 were lost with the killed
        // process); 2 messages were queued for it since the restore.
        var buffer = OutboxBuffer(maxMessages: 256, maxBytes: 1 << 20, restoring: Self.stored(4...6), storedThrough: 6)
        _ = buffer.append(Self.frame)
        _ = buffer.append(Self.frame)
        let resumed = buffer.rewind(resumingAfter: 9)
        let replay = buffer.takeUnsent()
        #expect(resumed && replay.map(\.seq) == [10, 11])
        #expect(replay.map(\.text) == [Self.frame(10), Self.frame(11)])
        _ = buffer.append(Self.frame)
        let next = buffer.takeUnsent()
        #expect(next.map(\.seq) == [12])
        // Only the first resume after the restore may be ahead: later ones are checked as usual.
        let ahead = buffer.rewind(resumingAfter: 20)
        #expect(!ahead)
    }

    @Test func aLinkRestoredAgainBeforeItsClientCameBackStillRenumbersWhatWasQueuedSinceTheFirstRestore() {
        // Restored with up to 6 stored; 7 and 8 were queued since, and the link moved to another
        // node (or was stored and restored again) with that boundary: its client, which had
        // processed 9 before the first node died, gets 7 and 8 as 10 and 11.
        let first = OutboxBuffer(maxMessages: 256, maxBytes: 1 << 20, restoring: Self.stored(4...6), storedThrough: 6)
        #expect(first.restoredThrough == 6)
        var moved = OutboxBuffer(maxMessages: 256, maxBytes: 1 << 20, restoring: Self.stored(4...8), storedThrough: 6)
        #expect(moved.upcomingSeq == 9)
        let resumed = moved.rewind(resumingAfter: 9)
        let replay = moved.takeUnsent()
        #expect(resumed && replay.map(\.seq) == [10, 11])
        #expect(replay.map(\.text) == [Self.frame(10), Self.frame(11)])
        #expect(moved.restoredThrough == nil)
    }

    @Test func aRestoreKeepsOnlyAGaplessRunWithinTheBounds() {
        var buffer = OutboxBuffer(maxMessages: 2, maxBytes: 1 << 20, restoring: Self.stored(1...2) + Self.stored(5...7), storedThrough: 7)
        #expect(buffer.keptCount.messages == 2)
        // 5 is gone (bound): a resume after 4 cannot be complete; after 5 it can.
        let afterFour = buffer.rewind(resumingAfter: 4)
        let afterFive = buffer.rewind(resumingAfter: 5)
        let replay = buffer.takeUnsent()
        #expect(!afterFour && afterFive && replay.map(\.seq) == [6, 7])
    }

    @Test func aMessagePutAheadGoesBeforeEveryUnsentOneAndSeqsStayInOrder() {
        var buffer = Self.filled(3)
        _ = buffer.takeUnsent()
        // 4..6 wait unsent; the e-stop goes ahead of them as 4, they become 5..7.
        for _ in 0..<3 { _ = buffer.append(Self.frame) }
        let (from, overBound) = buffer.appendAhead { #"{"type":"estop","seq":\#($0)}"# }
        #expect(from == 4 && !overBound)
        let sent = buffer.takeUnsent()
        #expect(sent.map(\.seq) == [4, 5, 6, 7])
        #expect(sent.map(\.text) == [#"{"type":"estop","seq":4}"#, Self.frame(5), Self.frame(6), Self.frame(7)])
        // What comes next follows, and a resume replays the new numbering.
        _ = buffer.append(Self.frame)
        #expect(buffer.takeUnsent().map(\.seq) == [8])
        let resumed = buffer.rewind(resumingAfter: 3)
        #expect(resumed)
        #expect(buffer.takeUnsent().map(\.seq) == [4, 5, 6, 7, 8])
    }

    @Test func aMessagePutAheadOfNothingIsTheNextAndAFullBufferSaysTheReaderIsTooSlow() {
        var buffer = Self.filled(2)
        _ = buffer.takeUnsent()
        let ahead = buffer.appendAhead { #"{"type":"estop","seq":\#($0)}"# }
        #expect(ahead.renumberedFrom == 3)
        #expect(buffer.takeUnsent().map(\.seq) == [3])
        // Four unsent of at most four: the reader is too slow (its owner drops the transport).
        var full = Self.filled(4, maxMessages: 4)
        let (from, overBound) = full.appendAhead { #"{"type":"estop","seq":\#($0)}"# }
        #expect(from == 1 && overBound)
        #expect(full.keptCount.messages == 4)
    }
}
