/// Contract §11's reliable sending: `cseq`, `ack`, `acked_cseq`, `peer_cseq`; nothing a numbering client sent is lost or doubled, even when the relay is killed.
import DeviceAuth
import Foundation
import Registry
import RelayTestSupport
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2))) struct ReliableSendingTests {
    /// A `webrtc_ice` numbered `cseq`, its candidate named after the number.
    static func ice(_ sessionID: String, _ cseq: Int) -> JSONObject {
        ["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:\(cseq)"], "cseq": cseq]
    }

    /// Reads `party` until an ack of `cseq` or more; every ack is unnumbered and none goes back.
    /// Returns the other messages read meanwhile.
    @discardableResult
    static func acks(on party: any Party, through cseq: Int, after known: Int = 0) async throws -> [JSONObject] {
        var acked = known
        var others: [JSONObject] = []
        while acked < cseq {
            let message = try await party.next()
            guard message["type"] as? String == "ack" else {
                others.append(message)
                continue
            }
            #expect(message["seq"] == nil, "an ack is never numbered: \(message)")
            let number = try #require(message["cseq"] as? Int)
            #expect(number >= acked, "acks never go back")
            acked = number
        }
        return others
    }

    /// What a receiving client processes of `messages`: each `webrtc_ice`'s `peer_cseq`, a repeated
    /// one ignored as the client libraries do; the candidate must be the one sent with that number.
    static func processed(_ messages: [JSONObject], into seen: inout [Int]) {
        for message in messages where message["type"] as? String == "webrtc_ice" {
            guard let number = message["peer_cseq"] as? Int else {
                Issue.record("a forwarded message of a numbering client carries peer_cseq: \(message)")
                continue
            }
            #expect((message["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:\(number)")
            if !seen.contains(number) { seen.append(number) }
        }
    }

    @Test func duplicatesAreAckedAndDroppedAndTheOtherPartyGetsEachOnceWithItsNumber() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let sessionID = try await ProcessClient.session(app: app, device: device).id

            // Re-sent, and re-sent out of order: each number is delivered once.
            for cseq in [1, 2, 2, 1, 3] { try device.send(Self.ice(sessionID, cseq)) }
            for cseq in 1...3 {
                let ice = try await app.next("webrtc_ice")
                #expect(ice["peer_cseq"] as? Int == cseq)
                #expect((ice["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:\(cseq)")
            }
            let deviceSide = WebSocketParty(socket: device)
            try await Self.acks(on: deviceSide, through: 3)
            // Nothing more for either: no fourth candidate, no ack for the app (it numbers nothing).
            try await app.expectNothingPending()
            try await device.expectNothingPending()

            // A client that does not number its messages: exactly v1 (no ack, no peer_cseq).
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:app"]])
            let plain = try await device.next("webrtc_ice")
            #expect(plain["peer_cseq"] == nil)
            try await app.expectNothingPending()

            // Any message may be numbered; a duplicate is only acked (no second pong).
            try device.send(["type": "ping", "cseq": 4, "request_id": "p4"])
            #expect(try await device.next("pong")["request_id"] as? String == "p4")
            try await Self.acks(on: deviceSide, through: 4)
            try device.send(["type": "ping", "cseq": 4, "request_id": "again"])
            let ack = try await device.next("ack")
            #expect(ack["cseq"] as? Int == 4)
            try await device.expectNothingPending()

            // A number that is not a positive integer is refused, and nothing else happens.
            for bad: Any in [0, -1, 1.5, "5"] {
                try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull(), "cseq": bad])
                let error = try await device.next("error")
                #expect(error["code"] as? String == "bad_request" && error["message"] as? String == "cseq must be a positive integer")
            }
            // Past 2^53 - 1 a JSON number is no longer exact: refused, naming the bound.
            for tooLarge: Any in [9_007_199_254_740_992.0, 1e300] {
                try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull(), "cseq": tooLarge])
                let error = try await device.next("error")
                #expect(error["code"] as? String == "bad_request" && error["message"] as? String == "cseq must be at most 9007199254740991 (2^53 - 1)")
            }
            try await app.expectNothingPending()

            // A resume says what was acked.
            let token = try #require(device.hello["resume_token"] as? String)
            device.close()
            _ = try await app.next("peer_status")
            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&resume_token=\(token.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)&last_seq=0"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            #expect(resumed.hello["acked_cseq"] as? Int == 4)
            // A fresh link's hello has none.
            #expect(app.hello["acked_cseq"] == nil)
        }
    }

    @Test func aNumberedMessageTheRateLimitRefusedIsAckedWithItsError() async throws {
        try await TestRelay.run(["RELAY_RATE_BURST": "2", "RELAY_RATE_PER_S": "1"]) { relay in
            let device = try await relay.device()
            for cseq in 1...3 { try device.send(["type": "ping", "request_id": "p\(cseq)", "cseq": cseq]) }
            // The third is refused: its outcome is the error on the link, so it is handled for
            // good and acked with the others (sent again, it would be a duplicate).
            let others = try await Self.acks(on: WebSocketParty(socket: device), through: 3)
            #expect(others.map { $0["type"] as? String } == ["pong", "pong", "error"])
            #expect(others.last?["code"] as? String == "rate_limited")
        }
    }

    /// Opens a device link on `transport`, resuming `resume` (its hello and the last seq
    /// processed) when given.
    static func device(
        _ transport: Transport,
        port: Int,
        secret: String,
        resume: (hello: JSONObject, lastSeq: Int)? = nil
    ) async throws -> any Party {
        let query = ProcessClient.signedQuery("robot-1", secret: secret)
        let token = resume.flatMap { $0.hello["resume_token"] as? String }
        switch transport {
        case .webSocket:
            let resuming = try resume.map { try ProcessClient.Resume($0.hello, lastSeq: $0.lastSeq) }
            return WebSocketParty(socket: try await ProcessClient(port: port).device("robot-1", secret: secret, resume: resuming))
        case .events, .poll:
            let hello = try await openHTTPLink(
                port: port,
                .device(query: query),
                resume: resume.map { ["resume_token": token ?? "", "last_seq": $0.lastSeq] }
            )
            if transport == .events { return try await EventStreamParty(port: port, hello: hello, lastEventID: resume?.lastSeq) }
            return PollParty(port: port, hello: hello, lastSeq: resume?.lastSeq ?? 0)
        }
    }

    @Test(arguments: Transport.allCases)
    func aKillRightAfterAHundredNumberedMessagesLosesAndDoublesNone(_ transport: Transport) async throws {
        try await RestartTests.withStore(.sqlite, ["RELAY_RATE_BURST": "1000"]) { backing in
            let secret = try await backing.registry.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: backing.environment)
            defer { relay.kill() }
            let device = try await Self.device(transport, port: relay.port, secret: secret)
            let app = try await ProcessClient(port: relay.port).app("alice")
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let credentials = try await app.next("webrtc_credentials")
            let sessionID = try #require(credentials["session_id"] as? String)
            let request = try await device.next("webrtc_request")
            let deviceSeq = try #require(request["seq"] as? Int)
            // The session itself is the relay's to keep (written within RELAY_OUTBOX_FLUSH_MS).
            _ = try await eventually("the session stored") { try await backing.sessionIsLive(sessionID) ? true : nil }

            // The device sends 100 numbered candidates and the relay dies right after.
            for cseq in 1...100 { try await device.send(Self.ice(sessionID, cseq)) }
            var before = [try await app.next("webrtc_ice")]
            await relay.killed()
            await device.vanish()
            var processed: [Int] = []
            before += try await RestartTests.rest(of: app).messages
            Self.processed(before, into: &processed)
            let appSeq = try #require((before + [credentials]).compactMap { $0["seq"] as? Int }.max())

            // The next process: the device resumes and re-sends what the relay did not ack.
            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: backing.environment)
            let resumedDevice = try await Self.device(transport, port: relay.port, secret: secret, resume: (device.hello, deviceSeq))
            #expect(resumedDevice.hello["resumed"] as? Bool == true)
            let acked = try #require(resumedDevice.hello["acked_cseq"] as? Int)
            #expect((0...100).contains(acked))
            for cseq in (acked + 1)..<101 { try await resumedDevice.send(Self.ice(sessionID, cseq)) }
            try await Self.acks(on: resumedDevice, through: 100, after: acked)

            // The app processes every candidate once, in order.
            let resumedApp = try await ProcessClient(port: relay.port).app("alice", resume: .init(app.hello, lastSeq: appSeq))
            #expect(resumedApp.hello["resumed"] as? Bool == true)
            while processed.last != 100 {
                Self.processed([try await RestartTests.next("webrtc_ice", on: resumedApp)], into: &processed)
            }
            // Candidates delivered before the kill but not yet stored with the device's marks come
            // again when re-sent: with the same peer_cseq, which the app ignores.
            try resumedApp.send(["type": "ping"])
            var repeated: [JSONObject] = []
            while true {
                let message = try await resumedApp.next()
                if message["type"] as? String == "pong" { break }
                if message["type"] as? String == "webrtc_ice" { repeated.append(message) }
            }
            Self.processed(repeated, into: &processed)
            #expect(processed == Array(1...100), "\(processed)")
        }
    }
}

/// Reliable sending across a fleet's nodes (in the fleet suite: one fleet at a time).
extension FleetTests {
    @Test func aClientResumingOnAnotherNodeReSendsWhatWasNotAckedAndEachArrivesOnce() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let opened = try await ProcessClient.session(app: app, device: device)
            let (sessionID, credentials) = (opened.id, opened.credentials)
            // The app sends 50 and its socket goes before it reads a single ack.
            for cseq in 1...50 { try app.send(ReliableSendingTests.ice(sessionID, cseq)) }
            app.close()

            // It resumes on the other node and re-sends everything after what that node says was acked.
            let resumed = try await fleet.client(1).app("alice", resume: .init(app.hello, lastSeq: try #require(credentials["seq"] as? Int)))
            #expect(resumed.hello["resumed"] as? Bool == true)
            let acked = try #require(resumed.hello["acked_cseq"] as? Int)
            #expect((0...50).contains(acked))
            for cseq in (acked + 1)..<51 { try resumed.send(ReliableSendingTests.ice(sessionID, cseq)) }
            try await ReliableSendingTests.acks(on: WebSocketParty(socket: resumed), through: 50, after: acked)

            // No node died: the device gets each exactly once, in order (not even a repeat to ignore).
            var numbers: [Int] = []
            while numbers.count < 50 {
                numbers.append(try #require(try await RestartTests.next("webrtc_ice", on: device)["peer_cseq"] as? Int))
            }
            #expect(numbers == Array(1...50))
            try device.send(["type": "ping"])
            while true {
                let message = try await device.next()
                if message["type"] as? String == "pong" { break }
                #expect(message["type"] as? String == "peer_status", "\(message)")
            }
        }
    }

    @Test(arguments: Transport.allCases)
    func aKillOfTheSendersNodeRightAfterAHundredNumberedMessagesLosesNone(_ transport: Transport) async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        try await fleet.explaining {
            let secret = fleet.secrets["robot-1"]!
            let device = try await ReliableSendingTests.device(transport, port: fleet.nodes[0].port, secret: secret)
            let app = try await fleet.client(1).app("alice")
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            let deviceSeq = try #require(try await device.next("webrtc_request")["seq"] as? Int)
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")

            // The device's node dies right after its 100 candidates, one of them already delivered.
            for cseq in 1...100 { try await device.send(ReliableSendingTests.ice(sessionID, cseq)) }
            var processed: [Int] = []
            ReliableSendingTests.processed([try await RestartTests.next("webrtc_ice", on: app)], into: &processed)
            await fleet.nodes[0].killed()
            await device.vanish()

            // It resumes on the other node and re-sends what was not acked.
            let resumed = try await ReliableSendingTests.device(transport, port: fleet.nodes[1].port, secret: secret, resume: (device.hello, deviceSeq))
            #expect(resumed.hello["resumed"] as? Bool == true)
            let acked = try #require(resumed.hello["acked_cseq"] as? Int)
            for cseq in (acked + 1)..<101 { try await resumed.send(ReliableSendingTests.ice(sessionID, cseq)) }
            try await ReliableSendingTests.acks(on: resumed, through: 100, after: acked)

            // The app processes each once, in order.
            do {
                while processed.count < 100 {
                    ReliableSendingTests.processed([try await RestartTests.next("webrtc_ice", on: app)], into: &processed)
                }
            } catch {
                Issue.record("acked before the kill \(acked); the app processed \(processed)")
                throw error
            }
            #expect(processed == Array(1...100), "\(processed)")
        }
    }

    @Test func aKillOfTheReceiversNodeRightAfterAHundredNumberedMessagesLosesNone() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let opened = try await ProcessClient.session(app: app, device: device)
            let (sessionID, request) = (opened.id, opened.request)
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")

            // The device's node dies right after the app's 100 candidates, one of them delivered.
            for cseq in 1...100 { try app.send(ReliableSendingTests.ice(sessionID, cseq)) }
            var before = [try await RestartTests.next("webrtc_ice", on: device)]
            await fleet.nodes[1].killed()
            before += try await RestartTests.rest(of: device).messages
            var processed: [Int] = []
            ReliableSendingTests.processed(before, into: &processed)
            let lastSeq = try #require((before + [request]).compactMap { $0["seq"] as? Int }.max())

            // The app's node stayed: everything it acks is safe, and it acks all 100.
            try await ReliableSendingTests.acks(on: WebSocketParty(socket: app), through: 100)
            // The device resumes on the app's node and processes each once, in order.
            let resumed = try await fleet.device(on: 0, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
            #expect(resumed.hello["resumed"] as? Bool == true)
            while processed.count < 100 {
                ReliableSendingTests.processed([try await RestartTests.next("webrtc_ice", on: resumed)], into: &processed)
            }
            #expect(processed == Array(1...100), "\(processed)")
        }
    }
}
