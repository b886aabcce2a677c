/// The edge (issue "The edge"): what a hostile or broken client can make the relay hold or do.
import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import RelayWebSocket
import Testing

/// Control frames: a client's pings cost the relay a bounded amount, and only a client that
/// reads stays connected.
@Suite(.timeLimit(.minutes(1))) struct PingFloodTests {
    @Test func aClientFloodingPingsIsClosedWith1008() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            // 500 pings of 125 bytes in one go, more than the 50 a burst may hold. The relay
            // half-closes after its close frame and drops what still comes, so the flood does
            // not turn its close into a reset (which would discard the close frame unread).
            let ping = RawFrame.make(RawFrame.ping, [UInt8](repeating: 7, count: 125))
            try client.send(Array((0..<500).map { _ in ping }.joined()))
            let (bytes, _) = try await client.readUntilEnd(within: .seconds(10))
            let frames = RawFrame.parse(bytes)
            #expect(RawFrame.closeCode(frames) == 1008)
            // The burst's pings were answered, the rest were not.
            let pongs = frames.filter { $0.opcode == RawFrame.pong }.count
            #expect(pongs <= 50, "\(pongs) pongs")
        }
    }

    @Test func pingsWithinTheLimitAreAnsweredWithTheirPayload() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            _ = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            for number in 0..<3 {
                let payload = Array("ping \(number)".utf8)
                try client.send(RawFrame.make(RawFrame.ping, payload))
                let pong = try await onOwnThread {
                    var bytes: [UInt8] = []
                    while true {
                        let (more, ending) = try client.receive(timeout: .seconds(5))
                        bytes += more
                        if ending != nil || more.isEmpty { return nil as [UInt8]? }
                        if let pong = RawFrame.parse(bytes).first(where: { $0.opcode == RawFrame.pong }) { return pong.payload }
                    }
                }
                #expect(pong == payload)
            }
        }
    }

    @Test func aClientThatDoesNotReadCannotStayOpenWithPongsOfItsOwn() async throws {
        try await TestRelay.run(["RELAY_HEARTBEAT_S": "1"]) { relay in
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            let start = ContinuousClock.now
            // Unsolicited pongs every 200 ms, none echoing the relay's pings.
            let (bytes, ending) = try await onOwnThread { () -> ([UInt8], RawConnection.Ending?) in
                var bytes: [UInt8] = []
                while ContinuousClock.now - start < .seconds(10) {
                    try? client.send(RawFrame.make(RawFrame.pong, Array("still here".utf8)))
                    let (more, ending) = try client.receive(timeout: .milliseconds(200))
                    bytes += more
                    if let ending { return (bytes, ending) }
                }
                return (bytes, nil)
            }
            let elapsed = ContinuousClock.now - start
            #expect(ending != nil, "still open after \(elapsed)")
            #expect(RawFrame.closeCode(RawFrame.parse(bytes)) == 1001)
            // Two missed pongs at one a second: about three seconds.
            #expect(elapsed < .seconds(6), "\(elapsed)")
        }
    }
}

/// HTTP requests that never finish, or cannot be read, are answered and closed; every
/// connection holds its place for a bounded time; one address holds a bounded number of them.
@Suite(.timeLimit(.minutes(1))) struct HTTPEdgeTests {
    static let quick = ["RELAY_HTTP_REQUEST_TIMEOUT_S": "1", "RELAY_HTTP_IDLE_TIMEOUT_S": "1"]

    /// Sends `request` on a fresh connection and reads until the relay ends it.
    static func answer(_ relay: TestRelay, to request: String) async throws -> (status: String, text: String, ending: RawConnection.Ending) {
        let client = try RawConnection.open(port: relay.port)
        try client.send(request)
        let (bytes, ending) = try await client.readUntilEnd(within: .seconds(10))
        let text = String(decoding: bytes, as: UTF8.self)
        return (String(text.prefix(12)), text, ending)
    }

    @Test(arguments: ["GET /hea lthz HTTP/1.1\r\nHost: x\r\n\r\n", "GARBAGE\r\n\r\n", "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"])
    func aMalformedRequestGets400AndIsClosed(request: String) async throws {
        try await TestRelay.run { relay in
            let answer = try await Self.answer(relay, to: request)
            #expect(answer.status == "HTTP/1.1 400")
            #expect(answer.text.contains(#"{"detail":"Malformed HTTP request"}"#))
        }
    }

    @Test func aHugeHeaderOrQueryGets431AndIsClosed() async throws {
        try await TestRelay.run { relay in
            let big = String(repeating: "a", count: 100 * 1024)
            for request in ["GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n", "GET /healthz?q=\(big) HTTP/1.1\r\nHost: x\r\n\r\n"] {
                let answer = try await Self.answer(relay, to: request)
                #expect(answer.status == "HTTP/1.1 431")
                #expect(answer.text.contains("at most 16384 bytes"))
            }
            // Under the limit is fine.
            let fine = try await Self.answer(relay, to: "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(big.prefix(8000))\r\nConnection: close\r\n\r\n")
            #expect(fine.status == "HTTP/1.1 200")
        }
    }

    @Test func aSilentConnectionGets408AtTheRequestTimeout() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let start = ContinuousClock.now
            let answer = try await Self.answer(relay, to: "")
            #expect(answer.status == "HTTP/1.1 408")
            #expect(ContinuousClock.now - start < .seconds(3))
        }
    }

    @Test func aHeaderSentAByteAtATimeGets408AtTheRequestTimeout() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let client = try RawConnection.open(port: relay.port)
            let start = ContinuousClock.now
            let (bytes, ending) = try await onOwnThread { () -> ([UInt8], RawConnection.Ending?) in
                var bytes: [UInt8] = []
                for byte in "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8 {
                    try? client.send([byte])
                    let (more, ending) = try client.receive(timeout: .milliseconds(250))
                    bytes += more
                    if let ending { return (bytes, ending) }
                }
                return (bytes, nil)
            }
            #expect(ending != nil)
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 408"))
            #expect(ContinuousClock.now - start < .seconds(3))
        }
    }

    @Test func aBodyThatNeverEndsGets408() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let answer = try await Self.answer(relay, to: "POST /api/link/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
            #expect(answer.status == "HTTP/1.1 408")
        }
    }

    @Test func anIdleKeptAliveConnectionIsClosedAfterTheIdleTimeout() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let client = try RawConnection.open(port: relay.port)
            let first = try await client.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(first.hasPrefix("HTTP/1.1 200"))
            // Kept alive: a second request on it is answered too.
            let second = try await client.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(second.hasPrefix("HTTP/1.1 200"))
            let start = ContinuousClock.now
            let (bytes, ending) = try await client.readUntilEnd(within: .seconds(5))
            // Closed with nothing more said.
            #expect(bytes.isEmpty)
            #expect(ending == .closed)
            #expect(ContinuousClock.now - start < .seconds(3))
        }
    }

    @Test func oneAddressHoldsAtMostItsShareOfConnections() async throws {
        try await TestRelay.run(["RELAY_MAX_CONNECTIONS_PER_IP": "5"]) { relay in
            // An address of its own, so no other client of this relay counts against it.
            let address = "127.0.0.3"
            let held = try (0..<5).map { _ in try RawConnection.open(port: relay.port, source: address) }
            // Each of the five is served.
            for connection in held {
                let answer = try await connection.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            }
            // A sixth from the same address is closed at once, unanswered.
            let sixth = try RawConnection.open(port: relay.port, source: address)
            try? sixth.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            let refused = try await sixth.readUntilEnd(within: .seconds(5))
            #expect(refused.bytes.isEmpty)
            // Another address is not affected.
            let other = try RawConnection.open(port: relay.port, source: "127.0.0.4")
            #expect(try await other.request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            // Once one of the five ends, the address may open another.
            held[0].reset()
            _ = try await eventually("the address to have room again") { () -> Bool? in
                let again = try RawConnection.open(port: relay.port, source: address)
                let answer = try? await again.request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return answer?.hasPrefix("HTTP/1.1 200") == true ? true : nil
            }
        }
    }
}

/// Device nonces (contract §1.2): each device has its own share of the replay cache, and a
/// spent nonce stays spent when the relay restarts, even after a kill.
@Suite(.timeLimit(.minutes(1))) struct ReplayCacheTests {
    @Test func aDeviceThatSpendsItsShareIsRefusedAndOthersAreNot() async throws {
        try await TestRelay.run(["RELAY_DEVICE_CONNECTS_PER_WINDOW": "5"]) { relay in
            for _ in 0..<5 { try await relay.device("robot-1").close() }
            let refused = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-1"))")
            #expect(refused.status == .tooManyRequests)
            #expect(refused.detail == "This device connected too often within the signature window; try again shortly")
            // Another device connects as usual.
            let other = try await relay.device("robot-2")
            try other.send(["type": "ping"])
            _ = try await other.next("pong")
        }
    }

    @Test func aSpentNonceStaysSpentAfterTheRelayIsKilledAndRestarted() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DB": path]
            let secret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey)
            let query = DeviceSignature.sign(
                deviceID: "robot-1",
                timestamp: Int(Date().timeIntervalSince1970),
                nonce: DeviceSignature.makeNonce(),
                secret: secret
            ).query
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(query)")
            _ = device.hello
            // Spent nonces are committed with the store's batches; once this one is, a kill
            // cannot lose it.
            let store = try RelayStore(path: path)
            _ = try await eventually("the nonce to be committed") { try store.liveNonces(now: Int(Date().timeIntervalSince1970)).first }
            await relay.killed()

            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            let replay = try RawConnection.open(port: relay.port)
            let answer = try await replay.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(query)"))
            #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer)")
            #expect(answer.contains(AuthFailure.replayedNonce.detail))
            // A fresh signature still gets in.
            _ = try await ProcessClient(port: relay.port).device("robot-1", secret: secret)
        }
    }
}

/// HTTP fallback links are forgotten when they end (contract §7): opening and abandoning many
/// leaves the relay's memory where it was.
@Suite(.timeLimit(.minutes(3))) struct HTTPLinkMemoryTests {
    @Test func thirtyThousandAbandonedHTTPLinksLeaveNothingBehind() async throws {
        let environment = [
            "RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_RESUME_GRACE_S": "1",
            "RELAY_CONNECT_BURST": "100000", "RELAY_CONNECT_RATE_PER_MIN": "1000000",
        ]
        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
        defer { relay.kill() }
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(
            userID: "alice", devices: nil, now: Date().timeIntervalSince1970, lifetime: 3600
        )
        let port = relay.port
        /// Opens `count` app links over one kept-alive connection and leaves each to lapse;
        /// returns once the relay says none is left, with its resident memory then.
        func openAndAbandon(_ count: Int) async throws -> Int {
            let opened = try await onOwnThread {
                let client = try RawConnection.open(port: port)
                var opened = 0
                for _ in 0..<count {
                    let answer = try client.exchange(
                        "POST /api/link HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                    )
                    if answer.head.hasPrefix("HTTP/1.1 200") { opened += 1 }
                }
                return opened
            }
            #expect(opened == count)
            _ = try await eventually("every link to end", timeout: .seconds(30)) { () -> Bool? in
                let metrics = try await onOwnThread {
                    try RawConnection.open(port: port).exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").body
                }
                return metrics.contains(#"relay_links{kind="app"} 0"#) ? true : nil
            }
            return try #require(relay.residentKiB)
        }
        // The first batch grows the allocator's pools; the second must find them reusable.
        let first = try await openAndAbandon(15_000)
        let second = try await openAndAbandon(15_000)
        // A leak of ~1.4 KiB a link (the finding) would be ~20 MiB here.
        #expect(second - first < 4 * 1024, "resident \(first) KiB after the first 15,000 links, \(second) KiB after the next")
    }
}

/// Configuration that cannot surprise (issue "The edge", 8): no accidental development mode, a
/// `.env` read as a shell reads it, misspelt keys named.
@Suite(.timeLimit(.minutes(1))) struct ConfigurationTrapTests {
    @Test func nothingConfiguredDoesNotStartWithoutDev() async throws {
        let run = try await CommandLineTests.relay(["serve"])
        #expect(run.status == 78)
        #expect(run.stderr.contains("relay: configuration: nothing is configured: set RELAY_JWT_SECRET and RELAY_DEVICE_MASTER_KEY"))
        #expect(!run.stderr.contains("DEVELOPMENT MODE"))
    }

    @Test func devNeverListensBeyondThisMachine() async throws {
        for arguments in [["serve", "--dev", "--host", "0.0.0.0"], ["serve", "--dev"]] {
            let run = try await CommandLineTests.relay(arguments, environment: arguments.count == 2 ? ["RELAY_HOST": "0.0.0.0"] : [:])
            #expect(run.status == 78)
            #expect(run.stderr.contains("--dev serves only this machine (RELAY_HOST 127.0.0.1, ::1 or localhost), not '0.0.0.0'"))
        }
    }

    @Test func aMisspeltKeyStopsStartUpNamingTheRightOne() async throws {
        let run = try await CommandLineTests.relay(
            ["serve"],
            environment: ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_HEARTBEAT_SEC": "5"]
        )
        #expect(run.status == 78)
        #expect(run.stderr == "relay: configuration: RELAY_HEARTBEAT_SEC is not a setting of the relay (did you mean RELAY_HEARTBEAT_S?)\n")
    }

    @Test func aDotEnvWithExportQuotesAndCommentsConfiguresTheRelay() async throws {
        try await withTemporaryDirectory { directory in
            try """
            # the relay's secrets
            export RELAY_JWT_SECRET="\(TestRelay.jwtSecret)"   # quoted, as many .env files are
            export RELAY_DEVICE_MASTER_KEY='\(TestRelay.masterKey)'

            """.write(toFile: "\(directory)/.env", atomically: true, encoding: .utf8)
            let relay = try await RelayProcess.start(
                binary: CommandLineTests.relayBinary,
                environment: [:],
                directory: URL(fileURLWithPath: directory)
            )
            defer { relay.kill() }
            // Not development mode: the secrets are the file's, without their quotes.
            let client = ProcessClient(port: relay.port)
            let app = try await client.app("alice")
            let device = try await client.device("robot-1", secret: DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey))
            _ = (app.hello, device.hello)
        }
    }

    @Test func theSettingsFileCanLiveElsewhere() async throws {
        try await withTemporaryDirectory { directory in
            try "RELAY_JWT_SECRET=\(TestRelay.jwtSecret)\n".write(toFile: "\(directory)/relay.env", atomically: true, encoding: .utf8)
            let signed = try await CommandLineTests.relay(["token", "--sub", "alice", "--env-file", "\(directory)/relay.env"])
            #expect(signed.status == 0)
            let verifier = AppTokenVerifier(configuration: .init(secretKeys: [.init(secret: Array(TestRelay.jwtSecret.utf8))]))
            #expect(try verifier.verify(signed.stdout.trimmingCharacters(in: .whitespacesAndNewlines), now: Date().timeIntervalSince1970).userID == "alice")
            let missing = try await CommandLineTests.relay(["serve", "--env-file", "\(directory)/missing.env"])
            #expect(missing.status == 78)
            #expect(missing.stderr == "relay: configuration: cannot read the settings file \(directory)/missing.env (--env-file)\n")
        }
    }
}

/// A TURN upstream that hangs (issue "The edge", 7): every pending set-up is answered within its
/// timeouts, and a link's pending request holds up nothing else on it.
@Suite(.timeLimit(.minutes(1))) struct HangingTURNTests {
    @Test func fiftyPendingSetUpsGetTurnErrorInTimeAndTheLinksOtherSessionsFlow() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            let environment = CloudflareTURNTests.environment(
                base,
                [
                    "CLOUDFLARE_TURN_CONNECT_TIMEOUT_MS": "500", "CLOUDFLARE_TURN_TIMEOUT_MS": "1000", "RELAY_MAX_SESSIONS_PER_DEVICE": "60",
                    "RELAY_MAX_SESSIONS_PER_APP": "60", "RELAY_RATE_BURST": "200",
                ]
            )
            try await TestRelay.run(environment) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                let (credentials, _) = try await relay.openSession(app: app, device: device)
                let sessionID = try #require(credentials["session_id"] as? String)
                // From now on the upstream never answers.
                fake.script(Array(repeating: .hang, count: 200))
                let start = ContinuousClock.now
                for index in 0..<50 { try app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "r\(index)"]) }
                // The session already open goes on at once.
                try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:1 1 udp 1 192.0.2.1 1 typ host"]])
                _ = try await device.next("webrtc_ice")
                #expect(ContinuousClock.now - start < .seconds(1), "ICE waited \(ContinuousClock.now - start)")
                // Each request: one attempt (1 s), a retry after at most 300 ms, the retry (1 s).
                var answered: Set<String> = []
                while answered.count < 50 {
                    let error = try await app.next("error")
                    #expect(error["code"] as? String == "turn_error")
                    answered.insert(try #require(error["request_id"] as? String))
                }
                let elapsed = ContinuousClock.now - start
                #expect(elapsed < .seconds(4), "the last turn_error came after \(elapsed)")
                // Nothing was left reserved: the device's sessions are the one that works.
                try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:2 1 udp 1 192.0.2.2 1 typ host"]])
                _ = try await app.next("webrtc_ice")
            }
        }
    }

    @Test func readinessSaysNoWhileTheProviderCannotBeReachedFromTheStart() async throws {
        // Nothing listens on port 1: every call to the provider is refused.
        try await TestRelay.run(CloudflareTURNTests.environment("http://127.0.0.1:1")) { relay in
            let answer = try await relay.request(.get, "/readyz")
            #expect(answer.status == .serviceUnavailable)
            #expect((answer.json["problems"] as? [String])?.first?.hasPrefix("turn (cloudflare): Cloudflare API error") == true, "\(answer.json)")
        }
    }
}

/// Limits keyed on who the client is (issue "The edge", 6): connections per device or user,
/// failed authentications per address, and the address a trusted proxy gives.
@Suite(.timeLimit(.minutes(1))) struct ClientAddressTests {
    /// The status line of an upgrade request sent on a fresh connection (after `prefix`, a
    /// PROXY protocol header say), with `headers` added.
    static func upgrade(_ relay: TestRelay, _ pathAndQuery: String, headers: String = "", prefix: [UInt8] = []) async throws -> String {
        let client = try RawConnection.open(port: relay.port)
        try client.send(prefix)
        let answer = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: pathAndQuery, headers: headers))
        // ("\r\n" is one Character in Swift.)
        return String(answer.prefix { $0 != "\r\n" })
    }

    static func proxyV2(_ source: [UInt8]) -> [UInt8] {
        // Signature, version 2 PROXY, TCP over IPv4, 12 bytes: source, destination, ports.
        [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0C] + source + [127, 0, 0, 1, 0x15, 0xB3, 0x00, 0x50]
    }

    @Test func aHundredAndFiftyRobotsBehindOneAddressAreAllBackWithinTenSeconds() async throws {
        // A relay process of its own with default limits (its sockets do not crowd this one).
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey]
        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
        defer { relay.kill() }
        let client = ProcessClient(port: relay.port)
        let start = ContinuousClock.now
        let devices = try await withThrowingTaskGroup(of: TestSocket.self) { group in
            for index in 0..<150 {
                group.addTask {
                    let deviceID = "robot-\(index)"
                    let device = try await client.device(deviceID, secret: DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: TestRelay.masterKey))
                    _ = device.hello
                    return device
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(devices.count == 150)
        #expect(ContinuousClock.now - start < .seconds(10))
        for device in devices { device.close() }
    }

    @Test func failedAuthenticationsAreLimitedPerAddressAndConnectionsPerUser() async throws {
        try await TestRelay.run(["RELAY_AUTH_FAILURE_BURST": "3", "RELAY_CONNECT_BURST": "2", "RELAY_CONNECT_RATE_PER_MIN": "1"]) { relay in
            // A user's connections are limited, whatever address they come from; others are not.
            for _ in 0..<2 { _ = try await relay.app("alice").hello }
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(relay.appToken("alice"))") == "HTTP/1.1 429 Too Many Requests")
            _ = try await relay.app("bob").hello
            // Failures count against the address: past them even a valid token waits.
            for _ in 0..<3 { #expect(try await Self.upgrade(relay, "/ws/app?token=not-a-token") == "HTTP/1.1 401 Unauthorized") }
            let refused = try await relay.upgrade("/ws/app?token=\(relay.appToken("carol"))")
            #expect(refused.status == .tooManyRequests)
            #expect(refused.detail?.hasPrefix("Too many failed authentications from this address; retry in") == true)
        }
    }

    @Test func aTrustedProxysForwardedForNamesTheClientAndAnUntrustedOneIsIgnored() async throws {
        let limits = ["RELAY_AUTH_FAILURE_BURST": "2", "RELAY_AUTH_FAILURES_PER_MIN": "1"]
        try await TestRelay.run(limits.merging(["RELAY_TRUSTED_PROXIES": "127.0.0.0/8"]) { $1 }) { relay in
            for _ in 0..<2 {
                let answer = try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n")
                #expect(answer == "HTTP/1.1 401 Unauthorized")
            }
            let token = relay.appToken()
            // The client 198.51.100.7 (the rightmost hop not trusted) has failed too often ...
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(token)", headers: "X-Forwarded-For: 198.51.100.7\r\n") == "HTTP/1.1 429 Too Many Requests")
            // ... over HTTP links too, and the edge's own header cannot be forged to escape it ...
            let link = try RawConnection.open(port: relay.port)
            let answer = try link.exchange(
                "POST /api/link HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nX-Forwarded-For: 198.51.100.7\r\n"
                    + "Relay-Client-Address: 192.0.2.1\r\nContent-Length: 0\r\n\r\n"
            )
            #expect(answer.head.hasPrefix("HTTP/1.1 429"), "\(answer.head)")
            // ... while another client behind the same proxy gets in.
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(token)", headers: "X-Forwarded-For: 198.51.100.8\r\n") == "HTTP/1.1 101 Switching Protocols")
        }
        try await TestRelay.run(limits) { relay in
            // Not a trusted proxy: X-Forwarded-For is whatever the client wrote, and ignored.
            for _ in 0..<2 { _ = try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 198.51.100.7\r\n") }
            let answer = try await Self.upgrade(relay, "/ws/app?token=\(relay.appToken())", headers: "X-Forwarded-For: 198.51.100.8\r\n")
            #expect(answer == "HTTP/1.1 429 Too Many Requests")
        }
    }

    @Test func aTrustedProxysPROXYProtocolHeaderNamesTheClient() async throws {
        try await TestRelay.run(["RELAY_AUTH_FAILURE_BURST": "1", "RELAY_AUTH_FAILURES_PER_MIN": "1", "RELAY_TRUSTED_PROXIES": "127.0.0.1"]) { relay in
            let token = relay.appToken()
            let v1 = Array("PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n".utf8)
            let failed = try await Self.upgrade(relay, "/ws/app?token=bad", prefix: v1)
            #expect(failed == "HTTP/1.1 401 Unauthorized")
            // The same client through version 2 of the protocol: its failure counts.
            let sameClient = try await Self.upgrade(relay, "/ws/app?token=\(token)", prefix: Self.proxyV2([198, 51, 100, 7]))
            #expect(sameClient == "HTTP/1.1 429 Too Many Requests")
            // Another client through the proxy gets in, with either version.
            let another = try await Self.upgrade(relay, "/ws/app?token=\(token)", prefix: Self.proxyV2([198, 51, 100, 8]))
            #expect(another == "HTTP/1.1 101 Switching Protocols")
            let other = Array("PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n".utf8)
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(token)", prefix: other) == "HTTP/1.1 101 Switching Protocols")
        }
    }
}

@Suite struct CIDRTests {
    @Test func networksContainTheirAddressesOfEitherFamily() throws {
        let v4 = try #require(CIDR("10.1.0.0/16"))
        #expect(v4.contains("10.1.200.3") && !v4.contains("10.2.0.1") && !v4.contains("::1"))
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        #expect(v4.contains("::ffff:10.1.0.9"))
        let v6 = try #require(CIDR("2001:db8::/32"))
        #expect(v6.contains("2001:db8:1::7") && !v6.contains("2001:db9::1"))
        #expect(CIDR("127.0.0.1")?.contains("127.0.0.1") == true && CIDR("127.0.0.1")?.contains("127.0.0.2") == false)
        #expect(CIDR("0.0.0.0/0")?.contains("203.0.113.5") == true)
        #expect(CIDR("10.0.0.0/33") == nil && CIDR("not-an-address") == nil && CIDR("10.0.0.0/x") == nil)
    }
}

@Suite(.timeLimit(.minutes(1))) struct HandshakeTests {
    @Test func theUpgradeAnswerCarriesRFC6455sAcceptValueAndTheHelloFollows() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            // RFC 6455 §1.3's example key and its accept value.
            let answer = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
            #expect(answer.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
            #expect(answer.lowercased().contains("\r\nupgrade: websocket\r\n"))
        }
    }

    @Test func anUpgradeWithoutAVersionOrKeyIsPlainHTTP() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            let answer = try client.exchange(
                "GET /ws/device?\(relay.deviceQuery()) HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            #expect(answer.head.hasPrefix("HTTP/1.1 426"), "\(answer.head)")
        }
    }
}
