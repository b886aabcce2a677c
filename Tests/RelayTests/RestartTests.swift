/// Contract §11 on one node: calls outlive the relay process (SIGTERM and SIGKILL, the next process on the same store).
import DeviceAuth
import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
import PostgresStore
import Registry
import RelayTestSupport
import Synchronization
import Testing

/// A relay restarted on the same store (`RELAY_DB`, or `RELAY_DATABASE_URL` on PostgreSQL): its
/// clients resume on the next process, their sessions go on with the same ids, nothing is lost,
/// and nobody is told the call ended.
@Suite(.timeLimit(.minutes(2))) struct RestartTests {
    enum Backend: String, CaseIterable, Sendable {
        case sqlite
        case postgres
    }

    /// A store of the backend's kind for a relay: the environment that names it, the registry
    /// on it, and a probe of what it holds live (sessions by id, and how many links keep a
    /// message with each seq).
    struct Store: Sendable {
        var environment: [String: String]
        var registry: any RelayRegistry
        var sessionIsLive: @Sendable (String) async throws -> Bool
        var linksKeeping: @Sendable (Int) async throws -> Int
    }

    static func withStore(_ backend: Backend, _ extra: [String: String] = [:], _ body: @escaping @Sendable (Store) async throws -> Void) async throws {
        let base = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey].merging(extra) { $1 }
        switch backend {
        case .sqlite:
            try await withTemporaryDirectory { directory in
                let path = "\(directory)/relay.sqlite"
                let store = try RelayStore(path: path)
                try await body(
                    Store(
                        environment: base.merging(["RELAY_DB": path]) { $1 },
                        registry: store,
                        sessionIsLive: { id in try store.liveState().sessions.contains { $0.id == id } },
                        linksKeeping: { seq in try store.liveState().messages.values.filter { $0.contains { $0.seq == seq } }.count }
                    )
                )
            }
        case .postgres:
            let server = try await PostgresServer.running()
            let url = try await server.createDatabase()
            let database = String(url.split(separator: "/").last!)
            let store = try PostgresStore(url: url, role: "relay-test", logger: Logger(label: "relay-test"))
            try await store.whileRunning {
                try await store.migrate()
                try await body(
                    Store(
                        environment: base.merging(["RELAY_DATABASE_URL": url]) { $1 },
                        registry: store,
                        sessionIsLive: { id in
                            try await server.sql("SELECT count(*) FROM relay_session WHERE session_id = '\(id)'", database: database) == "1"
                        },
                        linksKeeping: { seq in
                            Int(try await server.sql("SELECT count(DISTINCT link_id) FROM relay_outbox WHERE seq = \(seq)", database: database)) ?? 0
                        }
                    )
                )
            }
        }
    }

    /// The next message of `type`, past any `peer_status` (whose timing depends on which party
    /// the relay took back first).
    static func next(_ type: String, on socket: TestSocket, within timeout: Duration = Mailbox<String>.defaultWait) async throws -> JSONObject {
        while true {
            let message = try await socket.next(within: timeout)
            if message["type"] as? String == type { return message }
            guard message["type"] as? String == "peer_status" else {
                throw TestSocket.UnexpectedMessage(expected: type, received: "\(message)")
            }
        }
    }

    /// The `peer_status` values a socket hears up to and including `connected`.
    static func statusesUntilConnected(on socket: TestSocket, sessionID: String) async throws -> [String] {
        var statuses: [String] = []
        while statuses.last != "connected" {
            let status = try await socket.next("peer_status")
            #expect(status["session_id"] as? String == sessionID)
            statuses.append(try #require(status["status"] as? String))
        }
        return statuses
    }

    /// Every message until the socket closes (the relay's close code with it).
    static func rest(of socket: TestSocket) async throws -> (messages: [JSONObject], close: Int?) {
        var messages: [JSONObject] = []
        while true {
            do {
                messages.append(try await socket.next())
            } catch is TestSocket.SocketClosed {
                return (messages, try await socket.closeCode())
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func aGracefulRestartKeepsTheCallAndBothPartiesResumeItOnTheNextProcess(_ backend: Backend) async throws {
        // A drain long enough for what this test does during it on a loaded machine (nobody
        // leaves: the relay waits all of it).
        try await Self.withStore(backend, ["RELAY_SHUTDOWN_DRAIN_S": "5"]) { backing in
            let environment = backing.environment
            let store = backing.registry
            let secret = try await store.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            var client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-1", secret: secret)
            let app = try await client.app("alice")
            let sessionID = try await client.openSession(app: app, device: device, deviceID: "robot-1")
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer-1"])
            let offer = try await device.next("webrtc_offer")
            let offerSeq = try #require(offer["seq"] as? Int)

            kill(relay.process.processIdentifier, SIGTERM)
            let appGoAway = try await app.next("go_away")
            _ = try await device.next("go_away")
            // While it drains, the relay takes no new link and says it is not ready; the links it
            // has still relay.
            let http = HTTPClient(port: relay.port)
            let refused = try await http.post("/api/link", json: [:])
            #expect(refused.status == .serviceUnavailable)
            #expect(try await http.client.get("/readyz").status == .serviceUnavailable)
            await http.shutdown()
            let upgrade = try RawConnection.open(port: relay.port)
            let answer = try await upgrade.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/app"))
            #expect(answer.hasPrefix("HTTP/1.1 503"))
            #expect(answer.lowercased().contains("retry-after: 1"))
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:1"]])
            let candidate = try await device.next("webrtc_ice")

            // Nobody leaves within the drain: the sockets close with 1001, and nobody hears that
            // the call ended (at most that the other party is reconnecting, as its socket closed).
            for socket in [app, device] {
                let (messages, close) = try await Self.rest(of: socket)
                #expect(messages.allSatisfy { $0["type"] as? String == "peer_status" && $0["status"] as? String == "reconnecting" }, "\(messages)")
                #expect(close == 1001)
            }
            #expect(try await relay.process.exited() == 0)

            // The next process on the same store takes the links and the session over.
            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            client = ProcessClient(port: relay.port)
            // The device processed the offer but not the candidate: the candidate comes again,
            // with what followed.
            let resumedDevice = try await client.device("robot-1", secret: secret, resume: .init(device.hello, lastSeq: offerSeq))
            #expect(resumedDevice.hello["resumed"] as? Bool == true)
            #expect(resumedDevice.hello["link_id"] as? String == device.hello["link_id"] as? String)
            #expect(resumedDevice.hello["resume_token"] as? String == device.hello["resume_token"] as? String)
            #expect(try await resumedDevice.next("go_away")["seq"] as? Int == offerSeq + 1)
            let replayed = try await resumedDevice.next("webrtc_ice")
            #expect(replayed["seq"] as? Int == candidate["seq"] as? Int)
            #expect((replayed["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:1")

            let resumedApp = try await client.app("alice", resume: .init(app.hello, lastSeq: try #require(appGoAway["seq"] as? Int)))
            #expect(resumedApp.hello["resumed"] as? Bool == true)
            // Each hears the other go and come back; the session goes on with the same id.
            #expect(try await Self.statusesUntilConnected(on: resumedApp, sessionID: sessionID) == ["reconnecting", "connected"])
            #expect(try await Self.statusesUntilConnected(on: resumedDevice, sessionID: sessionID) == ["reconnecting", "connected"])
            try resumedDevice.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer-1"])
            let answered = try await resumedApp.next("webrtc_answer")
            #expect(answered["session_id"] as? String == sessionID && answered["sdp"] as? String == "answer-1")
            try resumedApp.send(["type": "webrtc_close", "session_id": sessionID])
            for socket in [resumedApp, resumedDevice] {
                let close = try await socket.next("webrtc_close")
                #expect(close["reason"] as? String == "normal" && close["by"] as? String == "app")
            }
            let row = try await eventually("the session's audit row closed") {
                try await store.auditLog(deviceID: nil, limit: 10).first { $0.sessionID == sessionID && $0.closeReason != nil }
            }
            #expect(row.closeReason == "normal" && row.closedBy == "app" && row.answeredAt != nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func aKilledRelaysCallsResumeOnTheNextProcessAndItsSetUpDeadlineHolds(_ backend: Backend) async throws {
        try await Self.withStore(backend, ["RELAY_SETUP_TIMEOUT_S": "8"]) { backing in
            let environment = backing.environment
            let secret = try await backing.registry.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            var client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-1", secret: secret)
            let app = try await client.app("alice")
            let requestedAt = ContinuousClock.now
            let sessionID = try await client.openSession(app: app, device: device, deviceID: "robot-1")
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer-1"])
            let offer = try await device.next("webrtc_offer")
            try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:d1"]])
            let candidate = try await app.next("webrtc_ice")
            // What a kill may lose is what was not yet written (RELAY_OUTBOX_FLUSH_MS): wait
            // until the store has the session and both messages.
            _ = try await eventually("the live state written") { () -> Bool? in
                let live = try await backing.sessionIsLive(sessionID)
                let keeping = try await backing.linksKeeping(2)
                return live && keeping == 2 ? true : nil
            }
            // Some time passes before the kill, so a set-up deadline counted from the restart
            // would come visibly later than the one counted from the request.
            try await Task.sleep(for: .seconds(2))
            await relay.killed()

            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            client = ProcessClient(port: relay.port)
            // Both resume from what they processed before the kill: nothing is replayed, nothing
            // is missing, and the session is still theirs.
            let resumedApp = try await client.app("alice", resume: .init(app.hello, lastSeq: try #require(candidate["seq"] as? Int)))
            let resumedDevice = try await client.device("robot-1", secret: secret, resume: .init(device.hello, lastSeq: try #require(offer["seq"] as? Int)))
            #expect(resumedApp.hello["resumed"] as? Bool == true && resumedDevice.hello["resumed"] as? Bool == true)
            // The device resumed second: the app hears it connected (it also hears its
            // reconnecting, if the killed process had written that), numbered after what it had.
            var status: JSONObject = [:]
            repeat { status = try await resumedApp.next("peer_status") } while status["status"] as? String != "connected"
            #expect((status["seq"] as? Int).map { $0 > (candidate["seq"] as? Int ?? .max) } == true)
            try resumedApp.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:a2"]])
            let afterKill = try await Self.next("webrtc_ice", on: resumedDevice)
            #expect((afterKill["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:a2")
            #expect((afterKill["seq"] as? Int).map { $0 > (offer["seq"] as? Int ?? .max) } == true)

            // Nobody answers: the set-up timeout fires 8 s after the request, as it would have
            // without the kill (counted from the restart it would come 2 s later or more).
            for socket in [resumedApp, resumedDevice] {
                let closed = try await Self.next("webrtc_close", on: socket)
                #expect(closed["session_id"] as? String == sessionID && closed["reason"] as? String == "setup_timeout")
            }
            let elapsed = ContinuousClock.now - requestedAt
            #expect(elapsed >= .seconds(7.5) && elapsed < .seconds(10), "\(elapsed)")
        }
    }

    @Test func aDeviceOnLongPollsKeepsItsLinkAndSessionAcrossARestart() async throws {
        try await Self.withStore(.sqlite, ["RELAY_SHUTDOWN_DRAIN_S": "0"]) { backing in
            let environment = backing.environment
            let secret = try await backing.registry.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let signed = { DeviceSignature.sign(deviceID: "robot-1", timestamp: Int(Date().timeIntervalSince1970), nonce: DeviceSignature.makeNonce(), secret: secret).query }
            let hello = try await openHTTPLink(port: relay.port, .device(query: signed()))
            var client = ProcessClient(port: relay.port)
            let app = try await client.app("alice")
            let http = HTTPClient(port: relay.port)
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            #expect(try await HTTPFallbackTests.poll(http, hello, ["last_seq": 0, "wait": true]).types == ["webrtc_request"])
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer-1"])
            // The relay has taken the offer (it answers the app's next message after it).
            try await app.expectNothingPending()

            kill(relay.process.processIdentifier, SIGTERM)
            let appGoAway = try await app.next("go_away")
            _ = try await Self.rest(of: app)
            #expect(try await relay.process.exited() == 0)
            await http.shutdown()

            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            client = ProcessClient(port: relay.port)
            let next = HTTPClient(port: relay.port)
            // The device's next poll, on the new process, gets what it had not acked: the offer
            // first, and no word of the session ending.
            let polled = try await HTTPFallbackTests.poll(next, hello, ["last_seq": 1, "wait": false])
            #expect(polled.seqs.first == 2 && polled.types.first == "webrtc_offer", "\(polled.types)")
            #expect(!polled.types.contains("webrtc_close"))
            let resumedApp = try await client.app("alice", resume: .init(app.hello, lastSeq: try #require(appGoAway["seq"] as? Int)))
            #expect(resumedApp.hello["resumed"] as? Bool == true)
            let answer: JSONObject = ["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer-1"]
            _ = try await HTTPFallbackTests.poll(next, hello, ["last_seq": polled.seqs.last ?? 1, "wait": false, "messages": [answer]])
            let answered = try await Self.next("webrtc_answer", on: resumedApp)
            #expect(answered["session_id"] as? String == sessionID && answered["sdp"] as? String == "answer-1")
            await next.shutdown()
        }
    }

    @Test func anIceRefreshDueWhileNoProcessRanIsSentAtOnceByTheNextOne() async throws {
        try await withTemporaryDirectory { directory in
            // The relay mints fresh ICE servers 2 s after a session opens (its credentials' 80 %).
            let environment = ["RELAY_DB": "\(directory)/relay.sqlite"]
            let refreshIn: @Sendable (Int) -> Duration = { _ in .seconds(2) }
            let deviceSecret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey)
            let first = Mutex<(app: ProcessClient.Resume, device: ProcessClient.Resume, sessionID: String, openedAt: ContinuousClock.Instant)?>(nil)
            try await TestRelay.run(environment, refreshDelay: refreshIn) { relay in
                let client = ProcessClient(port: relay.port)
                let device = try await client.device("robot-1", secret: deviceSecret)
                let app = try await client.app("alice", devices: ["robot-1"])
                let sessionID = try await client.openSession(app: app, device: device, deviceID: "robot-1")
                let resumes = (try ProcessClient.Resume(app.hello, lastSeq: 1), try ProcessClient.Resume(device.hello, lastSeq: 1))
                first.withLock { $0 = (resumes.0, resumes.1, sessionID, .now) }
            }
            let (appResume, deviceResume, sessionID, openedAt) = try #require(first.withLock { $0 })
            // No relay runs while the refresh falls due.
            try await Task.sleep(until: openedAt + .seconds(3))
            // The next process would refresh 6 s after a mint: a refresh it armed anew would come
            // that late, far from "at once" even on a loaded machine.
            try await TestRelay.run(environment, refreshDelay: { _ in .seconds(6) }) { relay in
                let started = ContinuousClock.now
                let client = ProcessClient(port: relay.port)
                let app = try await client.app("alice", devices: ["robot-1"], resume: appResume)
                let device = try await client.device("robot-1", secret: deviceSecret, resume: deviceResume)
                #expect(app.hello["resumed"] as? Bool == true && device.hello["resumed"] as? Bool == true)
                for socket in [app, device] {
                    let refresh = try await Self.next("ice_servers_refresh", on: socket)
                    #expect(refresh["session_id"] as? String == sessionID)
                }
                // Due at once, not 6 s after the new start.
                #expect(ContinuousClock.now - started < .seconds(4), "\(ContinuousClock.now - started)")
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func aSessionTheAuditLogShowsOpenButNoProcessKeptIsClosedAsRelayStopped(_ backend: Backend) async throws {
        try await Self.withStore(backend) { backing in
            // A relay killed within a few milliseconds of opening it: audited, never written live.
            try await backing.registry.apply([.sessionOpened(sessionID: "lost-1", userID: "alice", deviceID: "robot-1", at: Date())])
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: backing.environment)
            defer { relay.kill() }
            let row = try await eventually("the lost session audited") {
                try await backing.registry.auditLog(deviceID: "robot-1", limit: 10).first { $0.sessionID == "lost-1" && $0.closeReason != nil }
            }
            #expect(row.closeReason == "relay_stopped" && row.closedBy == "relay")
        }
    }
}
