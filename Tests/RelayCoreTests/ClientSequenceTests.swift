/// Contract §11's numbers as a pure value: what is a duplicate, when the ack is due and what it says.
import RelayCore
import Testing

@Suite struct ClientSequenceTests {
    @Test func aNumberAtOrBelowTheHighestTakenIsADuplicate() {
        var numbers = ClientSequence()
        // Gaps are allowed (a client may skip numbers); what comes at or below the highest is a duplicate.
        let fresh = [1, 2, 2, 1, 5, 4].map { numbers.arrive($0) }
        #expect(fresh == [true, true, false, false, true, false])
        #expect(numbers.taken == 5)
    }

    @Test func doneStopsBelowTheOldestMessageStillUnderWayAndTheAckSaysOnlyWhatIsStored() {
        var numbers = ClientSequence()
        _ = (1...4).map { numbers.arrive($0) }
        // 2 waits for its ICE servers while 3 and 4 are done: only 1 is done in a row.
        let moved = [1, 3, 4].map { numbers.finish($0) }
        #expect(moved == [true, false, false])
        #expect(numbers.done == 1)
        var acks = [numbers.takeAck()]
        numbers.stored(through: numbers.done)
        acks += [numbers.takeAck(), numbers.takeAck()]
        #expect(acks == [nil, 1, nil])
        let last = numbers.finish(2)
        #expect(last && numbers.done == 4)
        numbers.stored(through: 4)
        // A store that writes an older mark late changes nothing.
        numbers.stored(through: 3)
        acks = [numbers.takeAck(), numbers.takeAck()]
        #expect(acks == [4, nil])
    }

    @Test func aDuplicateOfAStoredMessageIsAckedAtOnceAndOneStillUnstoredWhenItIs() {
        var numbers = ClientSequence(through: 7)
        #expect(numbers.safe == 7 && numbers.taken == 7)
        let old = numbers.arrive(6)
        var acks = [numbers.takeAck()]
        let fresh = numbers.arrive(8) && numbers.finish(8)
        let again = numbers.arrive(8)
        acks.append(numbers.takeAck())
        numbers.stored(through: 8)
        acks.append(numbers.takeAck())
        #expect(!old && fresh && !again)
        #expect(acks == [7, nil, 8])
    }

    @Test func aResumedLinksHelloStandsForTheAckDue() {
        var numbers = ClientSequence()
        _ = numbers.arrive(1) && numbers.finish(1)
        numbers.stored(through: 1)
        numbers.announced()
        let ack = numbers.takeAck()
        #expect(ack == nil && numbers.safe == 1)
    }

    @Test func theLinksWriterTakesTheAckUnnumberedAfterItsFrames() throws {
        var machine = LinkStateMachine<TestInstant>(
            outbox: OutboxBuffer(maxMessages: 10, maxBytes: 10_000),
            rate: TokenBucket(burst: 10, perSecond: 10),
            resumeGrace: .seconds(1),
            tokenValidUntil: nil
        )
        guard case .attached(let generation, _) = machine.attach(resumingAfter: nil) else { throw Unattached() }
        _ = machine.offer { #"{"type":"pong","seq":\#($0)}"# }
        _ = machine.client.arrive(1) && machine.client.finish(1)
        machine.client.stored(through: 1)
        #expect(machine.writerHasWork)
        let taken = machine.take(generation: generation, closeWithFrames: true)
        #expect(taken == .write([.init(seq: 1, text: #"{"type":"pong","seq":1}"#), .init(seq: 0, text: #"{"type":"ack","cseq":1}"#)], close: nil))
        // Never kept: a resume replays the pong, not the ack.
        #expect(machine.keptFrames(after: 0).frames.map(\.seq) == [1])
        #expect(!machine.writerHasWork)
    }

    struct Unattached: Error {}
}
