/// Every transition of a link, on a mock clock: attach, supersede, detach and grace, resume, replay bounds, slow readers, closes, rate and token expiry.
import RelayCore
import Testing

@Suite struct LinkStateMachineTests {
    typealias Machine = LinkStateMachine<TestInstant>

    static func machine(grace: Duration = .seconds(30), maxMessages: Int = 256, tokenValidUntil: Double? = nil) -> Machine {
        Machine(
            outbox: OutboxBuffer(maxMessages: maxMessages, maxBytes: 1 << 20),
            rate: TokenBucket(burst: 3, perSecond: 1),
            resumeGrace: grace,
            tokenValidUntil: tokenValidUntil
        )
    }

    static func message(_ seq: Int) -> String { #"{"type":"m","seq":\#(seq)}"# }

    static func seqs(_ take: Machine.Take) -> [Int]? {
        guard case .write(let frames, _) = take else { return nil }
        return frames.map(\.seq)
    }

    @Test func aNewTransportSupersedesTheOldOnesWriter() {
        var link = Self.machine()
        let first = link.attach(resumingAfter: nil)
        #expect(first == .attached(generation: 1, previous: .none))
        _ = link.offer(Self.message)
        let second = link.attach(resumingAfter: nil)
        #expect(second == .attached(generation: 2, previous: .superseded(generation: 1)))
        let old = link.take(generation: 1, closeWithFrames: true)
        let current = link.take(generation: 2, closeWithFrames: true)
        #expect(old == .superseded && Self.seqs(current) == [1])
        // The old transport's end changes nothing.
        #expect(link.transportEnded(generation: 1, now: .zero) == .none && link.isAttached)
    }

    @Test func aLostTransportDetachesTheLinkForTheGraceThenItEnds() {
        var clock = TestClock()
        var link = Self.machine()
        _ = link.attach(resumingAfter: nil)
        let detached = link.transportEnded(generation: 1, now: clock.now)
        #expect(detached == .detached(until: clock.now.advanced(by: .seconds(30))))
        // Messages meanwhile are kept for a resume.
        #expect(link.offer(Self.message) == .queued)
        clock.advance(.milliseconds(29_999))
        let endedEarly = link.end(graceOverAt: clock.now)
        #expect(!link.graceIsOver(at: clock.now) && !endedEarly)
        clock.advance(.milliseconds(1))
        let ended = link.end(graceOverAt: clock.now)
        #expect(ended && link.isEnded)
        #expect(link.offer(Self.message) == .discarded)
        #expect(link.attach(resumingAfter: 0) == .refused)
    }

    @Test func aResumeWithinTheGraceGetsEveryMissedMessageAndCancelsTheEnd() {
        var clock = TestClock()
        var link = Self.machine()
        _ = link.attach(resumingAfter: nil)
        _ = link.offer(Self.message)
        _ = link.take(generation: 1, closeWithFrames: true)
        _ = link.transportEnded(generation: 1, now: clock.now)
        _ = link.offer(Self.message)
        _ = link.offer(Self.message)
        clock.advance(.seconds(10))
        let resumed = link.attach(resumingAfter: 1)
        #expect(resumed == .attached(generation: 3, previous: .detached))
        let replay = link.take(generation: 3, closeWithFrames: true)
        #expect(Self.seqs(replay) == [2, 3])
        // The grace timer firing late ends nothing.
        clock.advance(.seconds(30))
        let ended = link.end(graceOverAt: clock.now)
        #expect(!ended && link.isAttached)
    }

    @Test func aResumeWhoseReplayCannotBeCompleteIsRefused() {
        var link = Self.machine(maxMessages: 2)
        _ = link.attach(resumingAfter: nil)
        _ = link.transportEnded(generation: 1, now: .zero)
        for _ in 0..<4 { _ = link.offer(Self.message) }
        #expect(link.attach(resumingAfter: 1) == .refused)
        #expect(link.attach(resumingAfter: 2) == .attached(generation: 3, previous: .detached))
    }

    @Test func withoutAGraceALostTransportEndsTheLink() {
        var link = Self.machine(grace: .zero)
        _ = link.attach(resumingAfter: nil)
        #expect(link.transportEnded(generation: 1, now: .zero) == .end)
    }

    @Test func anHTTPLeaseHoldsTheLinkUntilItsDeadlineUnlessAnotherRequestComes() {
        var clock = TestClock()
        var link = Self.machine()
        _ = link.attach(resumingAfter: nil)
        // The poll answered: the link stays attached for the grace.
        #expect(link.lease(generation: 1, now: clock.now) == clock.now.advanced(by: .seconds(30)))
        clock.advance(.seconds(29))
        #expect(link.leaseExpired(generation: 1, now: clock.now) == .none && link.isAttached)
        clock.advance(.seconds(1))
        #expect(link.leaseExpired(generation: 1, now: clock.now) == .detached(until: clock.now.advanced(by: .seconds(30))))

        // The next poll attaches before the lease is over: the old lease's timer does nothing.
        var polled = Self.machine()
        _ = polled.attach(resumingAfter: nil)
        _ = polled.lease(generation: 1, now: .zero)
        _ = polled.attach(resumingAfter: nil)
        #expect(polled.leaseUntil == nil)
        #expect(polled.leaseExpired(generation: 1, now: .zero.advanced(by: .seconds(60))) == .none && polled.isAttached)
        // A stream that starts writing ends its own lease, not a newer transport's.
        _ = polled.lease(generation: 2, now: .zero)
        polled.endLease(generation: 1)
        #expect(polled.leaseUntil != nil)
        polled.endLease(generation: 2)
        #expect(polled.leaseUntil == nil)
        #expect(polled.leaseExpired(generation: 2, now: .zero.advanced(by: .seconds(60))) == .none)
        // A transport that is no longer the link's cannot take a lease.
        #expect(polled.lease(generation: 1, now: .zero) == nil)
    }

    @Test func aSlowReaderIsDroppedOncePerTransport() {
        var link = Self.machine(maxMessages: 4)
        _ = link.attach(resumingAfter: nil)
        var actions: [Machine.OfferAction] = []
        for _ in 0..<6 { actions.append(link.offer(Self.message)) }
        #expect(actions == [.queued, .queued, .queued, .queued, .queuedDroppingTransport, .queued])
        // Its replacement starts with a clean slate.
        _ = link.attach(resumingAfter: nil)
        #expect(link.offer(Self.message) == .queuedDroppingTransport)
        // A detached link is never "dropped": it has no transport.
        _ = link.transportEnded(generation: 2, now: .zero)
        for _ in 0..<10 { #expect(link.offer(Self.message) == .queued) }
    }

    @Test func aCloseGoesOutAfterWhatIsQueuedOnceOnly() {
        var link = Self.machine()
        _ = link.attach(resumingAfter: nil)
        _ = link.offer(Self.message)
        let replaced = Machine.CloseRequest(code: 4002, reason: "Replaced by a newer connection")
        let first = link.requestClose(replaced)
        let second = link.requestClose(.init(code: 1008, reason: "Device revoked"))
        #expect(first && !second && link.writerHasWork)
        // A poll gets the frames first and the close at its next turn...
        let frames = link.take(generation: 1, closeWithFrames: false)
        let close = link.take(generation: 1, closeWithFrames: false)
        #expect(frames == .write([.init(seq: 1, text: Self.message(1))], close: nil))
        #expect(close == .write([], close: replaced))
        #expect(link.closeWasDelivered && !link.writerHasWork)
        // ...a socket gets both at once.
        var socket = Self.machine()
        _ = socket.attach(resumingAfter: nil)
        _ = socket.offer(Self.message)
        _ = socket.requestClose(replaced)
        let both = socket.take(generation: 1, closeWithFrames: true)
        #expect(both == .write([.init(seq: 1, text: Self.message(1))], close: replaced))
    }

    @Test func anEndedLinksTransportStillWritesItsLastMessages() {
        var link = Self.machine()
        _ = link.attach(resumingAfter: nil)
        _ = link.offer(Self.message)
        _ = link.take(generation: 1, closeWithFrames: true)
        _ = link.offer(Self.message)
        _ = link.requestClose(.init(code: 1008, reason: "Device revoked"))
        let ended = link.end()
        let again = link.end()
        #expect(ended && !again)
        let last = link.take(generation: 1, closeWithFrames: true)
        #expect(last == .write([.init(seq: 2, text: Self.message(2))], close: .init(code: 1008, reason: "Device revoked")))
    }

    @Test func messagesPastTheRateAreRefusedAndCountedInARow() {
        var clock = TestClock()
        var link = Self.machine()
        var outcomes: [(Bool, Int)] = []
        for _ in 0..<5 { outcomes.append(link.admitMessage(now: clock.now)) }
        #expect(outcomes.map(\.0) == [true, true, true, false, false])
        #expect(outcomes.map(\.1) == [0, 0, 0, 1, 2])
        clock.advance(.seconds(1))
        let refilled = link.admitMessage(now: clock.now)
        #expect(refilled.allowed && refilled.refusedInARow == 0)
    }

    @Test func anAppTokenExpiresAtItsDeadlineUnlessRefreshed() {
        var app = Self.machine(tokenValidUntil: 1_000)
        #expect(!app.tokenHasExpired(at: 1_000) && app.tokenHasExpired(at: 1_000.5))
        app.tokenRefreshed(validUntil: 2_000)
        #expect(!app.tokenHasExpired(at: 1_500))
        // Devices have no token to expire.
        #expect(!Self.machine().tokenHasExpired(at: .greatestFiniteMagnitude))
    }
}
