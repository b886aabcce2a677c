/// The control lease's rules (contract §12) on the wall clock's instants, without sockets or stores.
import RelayCore
import Testing

@Suite struct ControlLeaseMachineTests {
    static let start = UnixMilliseconds(1_800_000_000_000)

    /// A grant to `session` (user `session`'s owner) of a lease with `ttl`.
    static func acquire(
        _ machine: inout ControlLeaseMachine,
        _ session: String,
        role: ControlRole = .drive,
        ttl: Duration = .seconds(3),
        takeover: Bool = false,
        at now: UnixMilliseconds = start
    ) -> Result<(lease: ControlLeaseMachine.Lease, changes: [ControlLeaseMachine.Change]), ControlLeaseMachine.Refusal> {
        machine.acquire(sessionID: session, userID: "user-of-\(session)", role: role, ttl: ttl, takeover: takeover, leaseID: "lease-\(session)-\(machine.epoch)", now: now)
    }

    @Test func aFreeLeaseIsGrantedAtTheNextEpochAndLapsesAtItsExpiryUnlessRenewed() throws {
        var machine = ControlLeaseMachine()
        let (lease, changes) = try Self.acquire(&machine, "s1").get()
        #expect(changes.map(\.reason) == [.granted] && changes.map(\.epoch) == [1])
        #expect(lease.expiresAt == Self.start.advanced(by: .seconds(3)))
        #expect(machine.nextDeadline == lease.expiresAt)
        // A timer that fires early changes nothing.
        #expect(machine.expire(now: Self.start.advanced(by: .milliseconds(2999))) == nil)
        // Renewed before its expiry: the same lease, the same epoch, a later expiry, nothing announced.
        let renewed = try machine.renew(sessionID: "s1", leaseID: lease.leaseID, now: Self.start.advanced(by: .seconds(1))).get()
        #expect(renewed.leaseID == lease.leaseID && machine.epoch == 1)
        #expect(renewed.expiresAt == Self.start.advanced(by: .seconds(4)))
        // The timer armed for the first expiry finds the lease renewed.
        #expect(machine.expire(now: lease.expiresAt) == nil)
        #expect(machine.nextDeadline == renewed.expiresAt)
        // Not renewed again: it lapses, nobody drives, and the epoch moves on.
        let lapsed = machine.expire(now: renewed.expiresAt)
        #expect(lapsed == .init(epoch: 2, lease: nil, reason: .expired))
        #expect(machine.lease == nil && machine.nextDeadline == nil)
        // A renewal after the lapse is refused.
        #expect(machine.renew(sessionID: "s1", leaseID: lease.leaseID, now: renewed.expiresAt) == .failure(.lost))
    }

    @Test func aRenewalPastTheExpiryIsLostEvenBeforeTheTimerFires() throws {
        var machine = ControlLeaseMachine()
        let lease = try Self.acquire(&machine, "s1").get().lease
        #expect(machine.renew(sessionID: "s1", leaseID: lease.leaseID, now: lease.expiresAt) == .failure(.lost))
        // Another session's lease id, or another session naming this one, is not this lease.
        #expect(machine.renew(sessionID: "s2", leaseID: lease.leaseID, now: Self.start) == .failure(.lost))
        #expect(machine.renew(sessionID: "s1", leaseID: "lease-other", now: Self.start) == .failure(.lost))
    }

    @Test func aHeldLeaseIsRefusedToOthersAndTakenOverOnlyBySupervisors() throws {
        var machine = ControlLeaseMachine()
        _ = try Self.acquire(&machine, "s1").get()
        #expect(Self.acquire(&machine, "s2").map { $0.lease } == .failure(.held))
        #expect(Self.acquire(&machine, "s2", takeover: true).map { $0.lease } == .failure(.forbidden))
        #expect(Self.acquire(&machine, "s2", role: .observe).map { $0.lease } == .failure(.forbidden))
        #expect(machine.epoch == 1)
        // A supervisor takes it over in one change: the new holder at the next epoch.
        let (lease, changes) = try Self.acquire(&machine, "s3", role: .supervise, takeover: true).get()
        #expect(changes == [.init(epoch: 2, lease: lease, reason: .takenOver)])
        #expect(machine.lease?.sessionID == "s3")
        // The old holder's lease is gone: its renewal is lost and its commands are fenced.
        #expect(machine.renew(sessionID: "s1", leaseID: "lease-s1-0", now: Self.start) == .failure(.lost))
        #expect(!machine.admits(command: "s1", epoch: 1, now: Self.start))
        #expect(machine.admits(command: "s3", epoch: 2, now: Self.start))
        #expect(!machine.admits(command: "s3", epoch: 1, now: Self.start))
    }

    @Test func anObserverNeverDrivesEvenAFreeLease() {
        var machine = ControlLeaseMachine()
        #expect(Self.acquire(&machine, "s1", role: .observe).map { $0.lease } == .failure(.forbidden))
        #expect(machine.epoch == 0 && machine.lease == nil)
    }

    @Test func anExpiredLeaseLapsesBeforeTheNextGrantAndEachIsAChange() throws {
        var machine = ControlLeaseMachine()
        let first = try Self.acquire(&machine, "s1", ttl: .seconds(1)).get().lease
        let (lease, changes) = try Self.acquire(&machine, "s2", at: first.expiresAt).get()
        #expect(changes.map(\.reason) == [.expired, .granted] && changes.map(\.epoch) == [2, 3])
        #expect(changes.last?.lease == lease)
    }

    @Test func theHolderAskingAgainGetsAFreshLease() throws {
        var machine = ControlLeaseMachine()
        let first = try Self.acquire(&machine, "s1").get().lease
        let (second, changes) = try Self.acquire(&machine, "s1", at: Self.start.advanced(by: .seconds(1))).get()
        #expect(changes.map(\.reason) == [.granted] && second.leaseID != first.leaseID)
        #expect(machine.renew(sessionID: "s1", leaseID: first.leaseID, now: Self.start.advanced(by: .seconds(1))) == .failure(.lost))
    }

    @Test func releasingOrClosingTheHoldersSessionFreesTheLease() throws {
        var machine = ControlLeaseMachine()
        let lease = try Self.acquire(&machine, "s1").get().lease
        #expect(machine.release(sessionID: "s2", leaseID: lease.leaseID) == .failure(.lost))
        #expect(machine.release(sessionID: "s1", leaseID: lease.leaseID) == .success(.init(epoch: 2, lease: nil, reason: .released)))
        #expect(machine.release(sessionID: "s1", leaseID: lease.leaseID) == .failure(.lost))

        _ = try Self.acquire(&machine, "s2").get()
        // Another session closing changes nothing; the holder's does.
        #expect(machine.sessionClosed("s1") == nil)
        #expect(machine.sessionClosed("s2") == .init(epoch: 4, lease: nil, reason: .sessionClosed))
        #expect(machine.current == .init(epoch: 4, lease: nil, reason: .released))
    }

    @Test func anEStopEndsTheLeaseBlocksNewOnesUntilAClearAndWaitsForTheDevicesAck() throws {
        var machine = ControlLeaseMachine()
        _ = try Self.acquire(&machine, "s1").get()
        let estop = ControlLeaseMachine.EStop(estopID: "e1", by: .app(userID: "bob"), reason: "person in the way", raisedAt: Self.start, senderLinkID: "link-bob")
        #expect(machine.raise(estop) == .init(epoch: 2, lease: nil, reason: .estop))
        #expect(machine.unacked == [estop])
        #expect(!machine.admits(command: "s1", epoch: 2, now: Self.start))
        // No lease while it is raised, for a supervisor either; acked, it still blocks.
        #expect(Self.acquire(&machine, "s1").map { $0.lease } == .failure(.estopped))
        #expect(Self.acquire(&machine, "s2", role: .supervise, takeover: true).map { $0.lease } == .failure(.estopped))
        #expect(machine.acknowledge("e1") == estop)
        #expect(machine.acknowledge("e1") == nil && machine.unacked.isEmpty)
        #expect(Self.acquire(&machine, "s1").map { $0.lease } == .failure(.estopped))
        // Only a supervisor or the device clears it.
        #expect(machine.clear(by: .drive) == .failure(.forbidden))
        #expect(machine.clear(by: .observe) == .failure(.forbidden))
        #expect(machine.clear(by: nil) == .success(.init(epoch: 3, lease: nil, reason: .estopCleared)))
        #expect(machine.clear(by: .supervise) == .success(nil))
        #expect(try Self.acquire(&machine, "s1").get().changes.map(\.epoch) == [4])
    }

    @Test func unackedEStopsAreBoundedByDroppingTheOldest() {
        var machine = ControlLeaseMachine()
        for index in 0..<(ControlLeaseMachine.unackedLimit + 3) {
            _ = machine.raise(.init(estopID: "e\(index)", by: .device, reason: nil, raisedAt: Self.start, senderLinkID: nil))
        }
        #expect(machine.unacked.count == ControlLeaseMachine.unackedLimit)
        #expect(machine.unacked.first?.estopID == "e3" && machine.raised?.estopID == "e18")
        #expect(machine.epoch == Int64(ControlLeaseMachine.unackedLimit + 3))
    }

    @Test func aRestoredRecordGoesOnFromItsEpoch() throws {
        var machine = ControlLeaseMachine(epoch: 41, lease: nil, raised: nil, unacked: [])
        #expect(machine.current.epoch == 41)
        #expect(try Self.acquire(&machine, "s1").get().changes.map(\.epoch) == [42])
    }
}
