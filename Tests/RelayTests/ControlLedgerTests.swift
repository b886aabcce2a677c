/// The control records (contract §12) in both stores: one grant for two askers at once, an epoch that outlives the process.
import Foundation
import Logging
import PostgresStore
import Registry
import RelayCore
import RelayTestSupport
import Testing

/// `ControlLedger` on the SQLite file and on PostgreSQL, each as two processes or nodes would
/// use it: two store objects on the same file or database.
@Suite(.timeLimit(.minutes(2))) struct ControlLedgerTests {
    enum Backend: String, CaseIterable, Sendable {
        case sqlite
        case postgres
    }

    /// Two ledgers on one store of `backend` (two nodes, or a process and the next), for `body`;
    /// `reopen` makes another on the same store.
    static func withLedgers(
        _ backend: Backend,
        _ body: @escaping @Sendable (_ first: any ControlLedger, _ second: any ControlLedger, _ reopen: @escaping @Sendable () async throws -> any ControlLedger) async throws -> Void
    ) async throws {
        switch backend {
        case .sqlite:
            try await withTemporaryDirectory { directory in
                let path = "\(directory)/relay.sqlite"
                try await body(try RelayStore(path: path), try RelayStore(path: path), { try RelayStore(path: path) })
            }
        case .postgres:
            let url = try await PostgresServer.running().createDatabase()
            let first = try PostgresStore(url: url, role: "node-a", logger: Logger(label: "test-control"))
            let second = try PostgresStore(url: url, role: "node-b", logger: Logger(label: "test-control"))
            try await first.whileRunning {
                try await first.migrate()
                try await second.whileRunning {
                    // The "next process" is the second node's pool: a fresh read of the same rows.
                    try await body(first, second, { second })
                }
            }
        }
    }

    static let now = UnixMilliseconds(1_800_000_000_000)

    @Test(arguments: Backend.allCases)
    func twoAppsAskingAtOnceGetOneGrant(_ backend: Backend) async throws {
        try await Self.withLedgers(backend) { first, second, _ in
            // Many rounds: each time, 8 asks for one device from two stores at once, on a
            // record that exists (the first write of a record takes turns anyway).
            for round in 0..<5 {
                let deviceID = "robot-\(round)"
                try await first.updateControl(of: deviceID) { _ in }
                let granted = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for asker in 0..<8 {
                        let ledger = asker.isMultiple(of: 2) ? first : second
                        group.addTask {
                            try await ledger.updateControl(of: deviceID) { machine in
                                let outcome = machine.acquire(
                                    sessionID: "s\(asker)", userID: "u\(asker)", role: .drive, ttl: .seconds(3), takeover: false,
                                    leaseID: "l\(asker)", now: Self.now
                                )
                                if case .success = outcome { return true }
                                return false
                            }
                        }
                    }
                    return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
                }
                #expect(granted == 1, "round \(round)")
                let kept = try await first.control(of: deviceID)
                #expect(kept.epoch == 1 && kept.lease != nil)
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func theEpochAndAnEStopOutliveTheProcessAndTheEpochIsNeverReused(_ backend: Backend) async throws {
        try await Self.withLedgers(backend) { first, _, reopen in
            #expect(try await first.control(of: "robot-1") == ControlLeaseMachine())
            _ = try await first.updateControl(of: "robot-1") { machine in
                machine.acquire(sessionID: "s1", userID: "alice", role: .drive, ttl: .seconds(3), takeover: false, leaseID: "l1", now: Self.now)
            }
            let estop = ControlLeaseMachine.EStop(estopID: "e1", by: .app(userID: "bob"), reason: "stop", raisedAt: Self.now, senderLinkID: "link-bob")
            _ = try await first.updateControl(of: "robot-1") { $0.raise(estop) }

            let next = try await reopen()
            let kept = try await next.control(of: "robot-1")
            #expect(kept.epoch == 2 && kept.lease == nil && kept.raised == estop && kept.unacked == [estop])
            let cleared = try await next.updateControl(of: "robot-1") { $0.clear(by: .supervise) }
            #expect(cleared == .success(.init(epoch: 3, lease: nil, reason: .estopCleared)))
            // Another device has an epoch of its own.
            #expect(try await next.control(of: "robot-2").epoch == 0)
        }
    }
}
