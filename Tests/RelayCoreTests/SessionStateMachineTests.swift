/// Every transition of a session's life, on a mock clock: set-up timeout, refresh at 80 % of the ttl, closes.
import RelayCore
import Testing

@Suite struct SessionStateMachineTests {
    typealias Machine = SessionStateMachine<String, TestInstant>

    /// A session opened at `clock.now` with credential `c1` of a 100 s ttl, refreshed at 80 s,
    /// with a 30 s set-up timeout.
    static func opened(_ clock: TestClock) -> Machine {
        var machine = Machine(setupTimeout: .seconds(30))
        let action = machine.open(with: .init("c1", expiresAt: clock.now.advanced(by: .seconds(100))), ttlSeconds: 100, refreshIn: .seconds(80), now: clock.now)
        guard case .announce = action else { Issue.record("not announced: \(action)"); return machine }
        return machine
    }

    @Test func aReservedSessionOpensWithASetUpAndARefreshDeadline() {
        let clock = TestClock()
        var machine = Machine(setupTimeout: .seconds(30))
        #expect(!machine.isOpen && machine.nextDeadline == nil)
        machine = Self.opened(clock)
        #expect(machine.isOpen && !machine.isAnswered)
        guard case .open(let open) = machine.state else { Issue.record("not open"); return }
        #expect(open.setupDeadline == clock.now.advanced(by: .seconds(30)))
        #expect(open.refreshDeadline == clock.now.advanced(by: .seconds(80)))
        #expect(machine.nextDeadline == clock.now.advanced(by: .seconds(30)))
    }

    @Test func aSessionClosedWhileItsCredentialsWereMintedNeverOpensAndRevokesThem() {
        var machine = Machine(setupTimeout: .seconds(30))
        guard case .forget = machine.close(.peerDisconnected, by: .relay) else { Issue.record("a reserved session is forgotten"); return }
        let action = machine.open(with: .init("late", expiresAt: .zero.advanced(by: .seconds(100))), ttlSeconds: 100, refreshIn: .seconds(80), now: .zero)
        guard case .revoke("late") = action else { Issue.record("expected the late credential revoked, got \(action)"); return }
        #expect(machine.isClosed && machine.nextDeadline == nil)
    }

    @Test func anUnansweredSessionTimesOutAtItsSetUpDeadlineNotBefore() {
        var clock = TestClock()
        var machine = Self.opened(clock)
        clock.advance(.milliseconds(29_999))
        guard case .none = machine.deadlinePassed(now: clock.now) else { Issue.record("too early"); return }
        clock.advance(.milliseconds(1))
        guard case .closeForSetupTimeout = machine.deadlinePassed(now: clock.now) else { Issue.record("set-up timeout not due"); return }
        guard case .announce(let revoke) = machine.close(.setupTimeout, by: .relay) else { Issue.record("not announced"); return }
        #expect(revoke == ["c1"])
        guard case .closed(let reason, let closer) = machine.state else { Issue.record("not closed"); return }
        #expect(reason == .setupTimeout && closer == .relay)
    }

    @Test func theFirstAnswerEndsTheSetUpDeadlineAndLaterAnswersChangeNothing() {
        var clock = TestClock()
        var machine = Self.opened(clock)
        clock.advance(.seconds(5))
        let first = machine.answered()
        let second = machine.answered()
        #expect(first && !second && machine.isAnswered)
        // Only the refresh is left.
        #expect(machine.nextDeadline == TestInstant.zero.advanced(by: .seconds(80)))
        clock.advance(.seconds(40))
        guard case .none = machine.deadlinePassed(now: clock.now) else { Issue.record("an answered session does not time out"); return }
    }

    @Test func credentialsAreRefreshedAt80PercentOfTheirTtlAndAllValidOnesAreRevokedAtClose() {
        var clock = TestClock()
        var machine = Self.opened(clock)
        _ = machine.answered()
        clock.advance(.seconds(80))
        guard case .mint(let ttl) = machine.deadlinePassed(now: clock.now) else { Issue.record("refresh not due at 80 s"); return }
        #expect(ttl == 100)
        // While the mint is under way nothing else is due (a late timer does not mint twice).
        #expect(machine.nextDeadline == nil)
        guard case .none = machine.deadlinePassed(now: clock.now) else { Issue.record("minted twice"); return }
        guard case .announce = machine.refreshed(with: .init("c2", expiresAt: clock.now.advanced(by: .seconds(100))), refreshIn: .seconds(80), now: clock.now)
        else { Issue.record("refresh not announced"); return }
        #expect(machine.nextDeadline == clock.now.advanced(by: .seconds(80)))

        // At the next refresh, c1 (expired at 100 s) is dropped; c2 is still valid.
        clock.advance(.seconds(80))
        guard case .mint = machine.deadlinePassed(now: clock.now) else { Issue.record("second refresh not due"); return }
        _ = machine.refreshed(with: .init("c3", expiresAt: clock.now.advanced(by: .seconds(100))), refreshIn: .seconds(80), now: clock.now)
        guard case .announce(let revoke) = machine.close(.normal, by: .app) else { Issue.record("not announced"); return }
        #expect(revoke == ["c2", "c3"])
    }

    @Test func aFailedRefreshIsRetriedAndAMintThatEndsAfterTheCloseIsRevoked() {
        var clock = TestClock()
        var machine = Self.opened(clock)
        _ = machine.answered()
        clock.advance(.seconds(80))
        guard case .mint = machine.deadlinePassed(now: clock.now) else { Issue.record("refresh not due"); return }
        let retrying = machine.refreshFailed(retryIn: .seconds(10), now: clock.now)
        #expect(retrying)
        #expect(machine.nextDeadline == clock.now.advanced(by: .seconds(10)))
        clock.advance(.seconds(10))
        guard case .mint = machine.deadlinePassed(now: clock.now) else { Issue.record("retry not due"); return }
        _ = machine.close(.deviceRevoked, by: .relay)
        let late = machine.refreshed(with: .init("c2", expiresAt: clock.now.advanced(by: .seconds(100))), refreshIn: .seconds(80), now: clock.now)
        guard case .revoke("c2") = late else { Issue.record("expected c2 revoked, got \(late)"); return }
        let retryingAfterClose = machine.refreshFailed(retryIn: .seconds(10), now: clock.now)
        #expect(!retryingAfterClose)
    }

    @Test func aSessionClosesOnceWithTheFirstReasonAndCloser() {
        var machine = Self.opened(TestClock())
        guard case .announce = machine.close(.rejected, by: .device) else { Issue.record("first close not announced"); return }
        guard case .none = machine.close(.peerDisconnected, by: .relay) else { Issue.record("closed twice"); return }
        guard case .closed(let reason, let closer) = machine.state else { Issue.record("not closed"); return }
        #expect(reason == .rejected && closer == .device)
        let answeredAfterClose = machine.answered()
        #expect(!answeredAfterClose)
        guard case .none = machine.deadlinePassed(now: .zero.advanced(by: .seconds(1000))) else { Issue.record("a closed session has no deadlines"); return }
    }
}
