import ArgumentParser
import Foundation
import RelayTestSupport
import Synchronization

/// Many app/device pairs in sessions, each side dropping its socket every few seconds and
/// resuming, both sending all the while. Every message carries a number; at the end each side
/// checks what it got: delivered, lost, duplicated. The sides send reliably (contract §11: each
/// message numbered with `cseq`, kept until acked, re-sent after a resume, a repeated
/// `peer_cseq` ignored) unless `--unnumbered`. Runs the real `relay` binary and reads its
/// memory from /proc. With `--nodes N`, a fleet of N nodes on a private PostgreSQL behind
/// haproxy (no sticky routing: a resume lands on any node), restarted one after another every
/// `--restart-every` seconds (SIGTERM: clients leave on `go_away` and resume elsewhere).
struct Soak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Drop-and-resume soak: messages lost and duplicated must be 0.")

    @Option(help: "App/device pairs.") var pairs = 20
    @Option(help: "Seconds to run.") var seconds = 120
    @Option(help: "Messages each side sends per second.") var rate = 50
    @Option(help: "Relay nodes (more than 1: a fleet on PostgreSQL behind haproxy).") var nodes = 1
    @Option(help: "With a fleet: restart a node (SIGTERM, then a new process) every this many seconds; 0 never.") var restartEvery = 0
    @Option(help: "With a fleet: a folder to keep each node process's last log lines in.") var logs: String?
    @Flag(help: "Print each loss, duplicate and restart as it happens, with the time.") var verbose = false
    @Flag(help: "With --restart-every: end the node with SIGKILL instead of SIGTERM.") var kill = false
    @Flag(help: "Send as a v1 client: no cseq, nothing re-sent (a SIGKILL then loses what was in flight).") var unnumbered = false

    func run() async throws {
        quietLogging()
        let kill = kill
        // Every pair reconnects from 127.0.0.1 many times a minute.
        let limits = ["RELAY_CONNECT_BURST": "100000", "RELAY_CONNECT_RATE_PER_MIN": "1000000"]
        let relay: RelayProcess?
        let fleet: FleetProcesses?
        let connector: Connector
        if nodes > 1 {
            let (binary, environment) = relayBinary(limits)
            fleet = try await FleetProcesses.start(
                count: nodes, binary: binary, environment: environment, logs: logs.map { URL(fileURLWithPath: $0) })
            relay = nil
            connector = Connector(port: fleet!.proxyPort, environment: environment)
        } else {
            let started = try await startRelayBinary(limits)
            (relay, fleet, connector) = (started.0, nil, started.1)
        }
        defer { relay?.kill() }
        let startRSS = relay?.residentKiB ?? fleet?.residentKiB ?? 0
        let deadline = ContinuousClock.now + .seconds(seconds)
        let tally = Tally()
        let rate = rate
        if let relay {
            print("soak: \(pairs) pairs for \(seconds) s, \(rate) messages/s each way, relay pid \(relay.process.processIdentifier) on port \(relay.port)")
        } else if let fleet {
            print(
                "soak: \(pairs) pairs for \(seconds) s, \(rate) messages/s each way, \(nodes) nodes on ports \(fleet.ports) behind haproxy on \(fleet.proxyPort)"
                    + (restartEvery > 0 ? ", a node restarted every \(restartEvery) s" : "")
            )
        }
        // Rolling restarts while the pairs run.
        let restarts = Task { [restartEvery, nodes] () -> [Duration] in
            guard let fleet, restartEvery > 0 else { return [] }
            var took: [Duration] = []
            var kills: [ContinuousClock.Instant] = []
            var next = 0
            while ContinuousClock.now + .seconds(restartEvery) < deadline - .seconds(5) {
                try? await Task.sleep(for: .seconds(restartEvery))
                let duration: Duration
                if verbose { print("  \(soakClock()) node \(next % nodes) stopping") }
                do {
                    if kill { kills.append(.now) }
                    duration = try await fleet.restart(next % nodes, kill: kill)
                } catch {
                    print("  node \(next % nodes) did not start again (\(error)); no more restarts")
                    break
                }
                took.append(duration)
                tally.add { $0.kills = kills }
                if verbose { print("  \(soakClock()) node \(next % nodes) restarted") }
                next += 1
            }
            return took
        }

        do {
            try await runPairs(connector: connector, deadline: deadline, tally: tally)
        } catch {
            // The fleet's processes (PostgreSQL, haproxy, the nodes) go with the run.
            restarts.cancel()
            await fleet?.stop()
            throw error
        }
        let restarted = await restarts.value
        let endRSS = relay?.residentKiB ?? fleet?.residentKiB ?? 0
        await fleet?.stop()
        let totals = tally.totals
        if fleet != nil {
            print("  node restarts: \(restarted.count) (\(kill ? "SIGKILL" : "SIGTERM") to exit: \(restarted.map { "\(Int($0 / .milliseconds(1))) ms" }.joined(separator: ", ")))")
        }
        let resumes = totals.resumeMillis.sorted()
        if !resumes.isEmpty {
            func at(_ share: Double) -> Int { Int(resumes[min(resumes.count - 1, Int(Double(resumes.count) * share))].rounded()) }
            print("  resume (connect to hello, on whichever node the balancer picks): p50 \(at(0.5)) ms, p99 \(at(0.99)) ms, max \(Int(resumes.last!.rounded())) ms")
        }
        for killed in totals.kills {
            // The clients that lost their socket in the 2 s after the kill, and when the last of them was back.
            let affected = totals.unexpected.filter { $0.dropped >= killed && $0.dropped < killed + .seconds(2) }
            if let last = affected.map(\.resumed).max() {
                print("  SIGKILL to every client of the node resumed: \(Int((last - killed) / .milliseconds(1))) ms (\(affected.count) links)")
            }
        }
        print(
            "  drop-and-resume cycles: \(totals.cycles) (\(totals.freshLinks) could not resume, \(totals.refusedConnects) connects refused and tried again)"
        )
        print("  messages sent:      \(totals.sent)")
        print("  messages delivered: \(totals.delivered)")
        print("  messages lost:      \(totals.sent - totals.delivered)")
        print("  messages duplicated: \(totals.duplicated)")
        if !unnumbered {
            print("  re-sent after a resume: \(totals.resent); received again and ignored by peer_cseq: \(totals.repeats)")
        }
        print("  out of order:       \(totals.outOfOrder) (delivered after a later one)")
        print("  errors / sessions closed: \(totals.errors) / \(totals.closes)")
        print("  relay memory (RSS\(fleet == nil ? "" : ", all nodes")): \(startRSS / 1024) MiB at start, \(endRSS / 1024) MiB at end")
        if totals.sent != totals.delivered || totals.duplicated != 0 || totals.outOfOrder != 0 || totals.errors != 0 || totals.closes != 0 {
            throw ExitCode(1)
        }
    }

    /// Every pair's session, sending and resuming until `deadline`, then checking what arrived.
    private func runPairs(connector: Connector, deadline: ContinuousClock.Instant, tally: Tally) async throws {
        let (rate, verbose, numbered) = (rate, verbose, !unnumbered)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<pairs {
                group.addTask {
                    let device = try await connector.device("soak-robot-\(index)")
                    let app = try await connector.app("soak-user-\(index)", devices: ["soak-robot-\(index)"])
                    try app.send(["type": "webrtc_request", "device_id": "soak-robot-\(index)"])
                    let sessionID = try await app.next("webrtc_credentials")["session_id"] as! String
                    _ = try await device.next("webrtc_request")
                    // Negotiate, so the set-up timeout does not end the call.
                    try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 offer"])
                    let offer = try await app.next("webrtc_offer")
                    try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 answer"])
                    let answer = try await device.next("webrtc_answer")
                    let appSide = Side(name: "pair \(index) app", verbose: verbose, numbered: numbered, socket: app, lastSeq: offer["seq"] as! Int) { resume in
                        try await connector.app("soak-user-\(index)", devices: ["soak-robot-\(index)"], resume: resume)
                    }
                    let deviceSide = Side(name: "pair \(index) device", verbose: verbose, numbered: numbered, socket: device, lastSeq: answer["seq"] as! Int) { resume in
                        try await connector.device("soak-robot-\(index)", resume: resume)
                    }
                    async let appReading: Void = appSide.readLoop(tally: tally)
                    async let deviceReading: Void = deviceSide.readLoop(tally: tally)
                    async let appSending: Void = appSide.sendLoop(sessionID: sessionID, until: deadline, rate: rate, tally: tally)
                    async let deviceSending: Void = deviceSide.sendLoop(sessionID: sessionID, until: deadline, rate: rate, tally: tally)
                    _ = try await (appSending, deviceSending)
                    // Both stopped sending; each waits until the other's last message is in.
                    await appSide.waitForEverything(from: deviceSide)
                    await deviceSide.waitForEverything(from: appSide)
                    if verbose {
                        for (side, other) in [(appSide, deviceSide), (deviceSide, appSide)] {
                            let missing = side.missing(upTo: other.sentCount - 1)
                            if !missing.isEmpty { print("  \(side.name) never received \(missing.map(String.init).joined(separator: ", "))") }
                        }
                    }
                    appSide.finish()
                    deviceSide.finish()
                    _ = try await (appReading, deviceReading)
                }
            }
            try await group.waitForAll()
        }
    }
}

/// Counts across all pairs.
final class Tally: Sendable {
    struct Totals {
        var sent = 0
        var delivered = 0
        var duplicated = 0
        var outOfOrder = 0
        var cycles = 0
        var freshLinks = 0
        /// `error` and `webrtc_close` messages: none should come.
        var errors = 0
        var closes = 0
        /// Reconnects refused (a node going away) and tried again.
        var refusedConnects = 0
        /// Messages sent again after a resume (not acked before it).
        var resent = 0
        /// Messages received again with a `peer_cseq` already processed, and ignored.
        var repeats = 0
        /// How long each resume took, from the connect to the `hello`.
        var resumeMillis: [Double] = []
        /// Sockets the relay's side dropped without a `go_away` (a node killed), and when their
        /// side was back.
        var unexpected: [(dropped: ContinuousClock.Instant, resumed: ContinuousClock.Instant)] = []
        /// When nodes were killed.
        var kills: [ContinuousClock.Instant] = []
    }

    private let totals_ = Mutex(Totals())
    var totals: Totals { totals_.withLock { $0 } }

    func add(_ change: (inout Totals) -> Void) {
        totals_.withLock { change(&$0) }
    }
}

/// One party of a soak session: sends numbered ICE candidates, drops its socket now and then
/// and resumes with the last `seq` it processed; a reader task processes whatever arrives.
/// Numbered (contract §11), it keeps what it sent until the relay acks it and sends it again
/// after a resume.
final class Side: Sendable {
    let name: String
    let verbose: Bool
    let numbered: Bool
    let reconnect: @Sendable (String) async throws -> TestSocket

    private struct State {
        var socket: TestSocket
        var lastSeq: Int
        var sentCount = 0
        /// Every number up to this one was received from the other side.
        var received = -1
        /// Numbers received above `received`, and the highest received.
        var ahead = Set<Int>()
        var highest = -1
        /// The relay said `go_away`: the next drop comes at once.
        var goAway = false
        /// The socket ended without this side closing it (its node was killed): when.
        var lost: ContinuousClock.Instant?
        /// This side is closing its socket itself.
        var closing = false
        /// Sent with a `cseq` and not acked yet, in order.
        var unacked: [(cseq: Int, message: JSONObject)] = []

        mutating func acked(through cseq: Int) {
            unacked.removeFirst(unacked.prefix { $0.cseq <= cseq }.count)
        }
    }

    private let state: Mutex<State>
    /// Sockets for the reader, one after another; finished at the end of the run.
    private let sockets: AsyncStream<TestSocket>
    private let socketsInput: AsyncStream<TestSocket>.Continuation
    /// The reader is done with a socket (everything it held was processed).
    private let drained: AsyncStream<Void>
    private let drainedInput: AsyncStream<Void>.Continuation

    init(
        name: String,
        verbose: Bool = false,
        numbered: Bool,
        socket: TestSocket,
        lastSeq: Int,
        reconnect: @escaping @Sendable (String) async throws -> TestSocket
    ) {
        self.name = name
        self.verbose = verbose
        self.numbered = numbered
        self.reconnect = reconnect
        self.state = Mutex(State(socket: socket, lastSeq: lastSeq))
        (sockets, socketsInput) = AsyncStream.makeStream(of: TestSocket.self, bufferingPolicy: .bufferingOldest(4))
        (drained, drainedInput) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingOldest(4))
        socketsInput.yield(socket)
    }

    var sentCount: Int { state.withLock { $0.sentCount } }
    var received: Int { state.withLock { $0.received } }

    func sendLoop(sessionID: String, until deadline: ContinuousClock.Instant, rate: Int, tally: Tally) async throws {
        var drainedSockets = drained.makeAsyncIterator()
        while true {
            let socket = state.withLock { $0.socket }
            let cycleEnd = min(deadline, ContinuousClock.now + .milliseconds(Int.random(in: 1500...4000)))
            while ContinuousClock.now < cycleEnd, !state.withLock({ $0.goAway || $0.lost != nil }) {
                let numbered = numbered
                let message = state.withLock { state in
                    defer { state.sentCount += 1 }
                    var message: JSONObject = [
                        "type": "webrtc_ice", "session_id": sessionID,
                        "candidate": ["candidate": "candidate:\(state.sentCount)", "sdpMid": "0", "sdpMLineIndex": 0],
                    ]
                    if numbered {
                        message["cseq"] = state.sentCount + 1
                        state.unacked.append((state.sentCount + 1, message))
                    }
                    return message
                }
                try socket.send(message)
                tally.add { $0.sent += 1 }
                try await Task.sleep(for: .milliseconds(1000 / rate))
            }
            guard ContinuousClock.now < deadline else { return }
            // Drop: what was sent is written before the close frame. Then resume from the
            // last message the reader processed.
            state.withLock { $0.closing = true }
            socket.close()
            _ = await drainedSockets.next()
            if verbose { print("  \(soakClock()) \(name) closed its socket") }
            try await Task.sleep(for: .milliseconds(Int.random(in: 50...400)))
            let lastSeq = state.withLock { $0.lastSeq }
            // A node going away refuses new links (503, Retry-After) until the balancer takes
            // it out: try again, as a client does.
            var attempt = 0
            var fresh: TestSocket
            let connecting = ContinuousClock.now
            while true {
                do {
                    // A client gives up on a connect that brings no hello in a few seconds (one
                    // to a node killed while it answered may never end) and tries again.
                    let query = "&resume_token=\(socket.hello["resume_token"] as! String)&last_seq=\(lastSeq)"
                    fresh = try await withDeadline(.seconds(5), "a hello") { try await self.reconnect(query) }
                    break
                } catch where attempt < 25 {
                    if verbose { print("  \(soakClock()) \(name) could not connect: \(error)") }
                    attempt += 1
                    tally.add { $0.refusedConnects += 1 }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            let lost = state.withLock { $0.lost }
            tally.add {
                $0.cycles += 1
                if fresh.hello["resumed"] as? Bool != true { $0.freshLinks += 1 }
                $0.resumeMillis.append(Double((ContinuousClock.now - connecting) / .microseconds(1)) / 1000)
                if let lost { $0.unexpected.append((lost, .now)) }
            }
            // A fresh link numbers its messages from the start; what was not acked went with the
            // old one. A resumed one gets again what the relay did not ack.
            let resend = state.withLock { state -> [JSONObject] in
                guard fresh.hello["resumed"] as? Bool == true else {
                    state.lastSeq = 0
                    state.unacked.removeAll()
                    return []
                }
                state.acked(through: fresh.hello["acked_cseq"] as? Int ?? 0)
                return state.unacked.map(\.message)
            }
            for message in resend { try fresh.send(message) }
            tally.add { $0.resent += resend.count }
            if verbose {
                let sent = state.withLock { $0.sentCount }
                print("  \(soakClock()) \(name) resumed (\(fresh.hello["resumed"] ?? "-")) from seq \(lastSeq) after \(attempt) refusals, next to send \(sent)")
            }
            state.withLock {
                $0.socket = fresh
                $0.goAway = false
                $0.lost = nil
                $0.closing = false
            }
            socketsInput.yield(fresh)
        }
    }

    func readLoop(tally: Tally) async throws {
        for await socket in sockets {
            while let message = try? await socket.next() {
                process(message, tally: tally)
            }
            state.withLock { state in
                if !state.closing, state.lost == nil { state.lost = .now }
            }
            drainedInput.yield()
        }
    }

    private func process(_ message: JSONObject, tally: Tally) {
        if let seq = message["seq"] as? Int {
            let (socket, ack) = state.withLock { state -> (TestSocket, Int?) in
                state.lastSeq = max(state.lastSeq, seq)
                return (state.socket, seq % 20 == 0 ? seq : nil)
            }
            if let ack { try? socket.send(["type": "ack", "seq": ack]) }
        }
        switch message["type"] as? String {
        case "go_away":
            state.withLock { $0.goAway = true }
            if verbose { print("  \(soakClock()) \(name) go_away at seq \(message["seq"] ?? "-")") }
        case "ack":
            if let cseq = message["cseq"] as? Int { state.withLock { $0.acked(through: cseq) } }
        case "error": tally.add { $0.errors += 1 }
        case "webrtc_close": tally.add { $0.closes += 1 }
        default: break
        }
        guard message["type"] as? String == "webrtc_ice",
            let candidate = (message["candidate"] as? JSONObject)?["candidate"] as? String,
            let number = Int(candidate.dropFirst("candidate:".count))
        else { return }
        let said = state.withLock { state -> String? in
            if number <= state.received || state.ahead.contains(number) {
                // Sent again after a resume: a client ignores a `peer_cseq` it processed (contract §11).
                if message["peer_cseq"] as? Int == number + 1 {
                    tally.add { $0.repeats += 1 }
                    return nil
                }
                tally.add { $0.duplicated += 1 }
                return "\(number) again (seq \(message["seq"] ?? "-"))"
            }
            tally.add { $0.delivered += 1 }
            let late = number < state.highest
            let highest = state.highest
            state.highest = max(state.highest, number)
            state.ahead.insert(number)
            while state.ahead.remove(state.received + 1) != nil { state.received += 1 }
            guard late else { return nil }
            tally.add { $0.outOfOrder += 1 }
            return "\(number) after \(highest) (seq \(message["seq"] ?? "-"))"
        }
        if verbose, let said { print("  \(soakClock()) \(name) received \(said)") }
    }

    /// Waits (up to 15 s) until the other side's last message has been processed here.
    func waitForEverything(from other: Side) async {
        let expected = other.sentCount - 1
        let giveUp = ContinuousClock.now + .seconds(15)
        while received < expected, ContinuousClock.now < giveUp {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The numbers up to `last` the other side sent that never arrived here.
    func missing(upTo last: Int) -> [Int] {
        state.withLock { state in
            guard state.received < last else { return [] }
            return (state.received + 1...last).filter { !state.ahead.contains($0) }
        }
    }

    /// Ends the run: the current socket closes and the reader stops after it.
    func finish() {
        state.withLock { $0.socket }.close()
        socketsInput.finish()
    }
}

/// Wall-clock time of day with milliseconds, to line the soak's events up with the relays' logs.
func soakClock() -> String {
    let formatter = DateFormatter()
    formatter.dateFormat = "HH:mm:ss.SSS"
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: Date())
}
