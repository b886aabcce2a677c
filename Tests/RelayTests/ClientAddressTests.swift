/// Who the client is (issue "The edge", 6): limits per device, user and address; trusted proxies' X-Forwarded-For and PROXY headers.
import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import RelayWebSocket
import Testing

/// Limits keyed on who the client is (issue "The edge", 6): connections per device or user,
/// failed authentications per address and claimed device id (never refusing a valid credential:
/// issue "The edge, third round", 4), and the address a trusted proxy gives.
@Suite(.timeLimit(.minutes(1))) struct ClientAddressTests {
    /// The status line of an upgrade request sent on a fresh connection (after `prefix`, a
    /// PROXY protocol header say), with `headers` added.
    static func upgrade(_ relay: TestRelay, _ pathAndQuery: String, headers: String = "", prefix: [UInt8] = [], source: String? = nil) async throws -> String {
        let client = try RawConnection.open(port: relay.port, source: source)
        try client.send(prefix)
        let answer = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: pathAndQuery, headers: headers))
        // ("\r\n" is one Character in Swift.)
        return String(answer.prefix { $0 != "\r\n" })
    }

    /// The status line of a device's upgrade, signed with `secret` (nil: its own), from `source`.
    static func deviceUpgrade(_ relay: TestRelay, _ deviceID: String, secret: String?, from source: String) async throws -> String {
        try await upgrade(relay, "/ws/device?" + relay.deviceQuery(deviceID, secret: secret), source: source)
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
        // Budgets refilled once a minute: a slow machine does not earn a failure back mid-test.
        let limits = ["RELAY_AUTH_FAILURE_BURST": "3", "RELAY_AUTH_FAILURES_PER_MIN": "1", "RELAY_CONNECT_BURST": "2", "RELAY_CONNECT_RATE_PER_MIN": "1"]
        try await TestRelay.run(limits) { relay in
            // A user's connections are limited, whatever address they come from; others are not.
            for _ in 0..<2 { _ = try await relay.app("alice").hello }
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(relay.appToken("alice"))") == "HTTP/1.1 429 Too Many Requests")
            _ = try await relay.app("bob").hello
            // Failures count against the address: past them the next failure waits ...
            for _ in 0..<3 { #expect(try await Self.upgrade(relay, "/ws/app?token=not-a-token") == "HTTP/1.1 401 Unauthorized") }
            let refused = try await relay.upgrade("/ws/app?token=not-a-token")
            #expect(refused.status == .tooManyRequests)
            #expect(refused.detail?.hasPrefix("Too many failed authentications from this address; retry in") == true)
            // ... and a valid token from the same address is let in: others' failures are not its own.
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(relay.appToken("carol"))") == "HTTP/1.1 101 Switching Protocols")
            let device = try await relay.device("robot-1")
            _ = device.hello
        }
    }

    @Test func aMisconfiguredRobotIsThrottledWhereverItComesFromAndLocksNobodyOut() async throws {
        try await TestRelay.run(["RELAY_AUTH_FAILURE_BURST": "2", "RELAY_AUTH_FAILURES_PER_MIN": "1"]) { relay in
            // robot-7 signs with a stale secret, from an address it shares with other robots.
            let stale = "a-secret-it-no-longer-has"
            var answers: [String] = []
            for _ in 0..<2 { answers.append(try await Self.deviceUpgrade(relay, "robot-7", secret: stale, from: "127.0.0.5")) }
            // Its failures count against the device id it claims, from any address ...
            answers.append(try await Self.deviceUpgrade(relay, "robot-7", secret: stale, from: "127.0.0.6"))
            // ... and against the address, whose next failure for another id waits too ...
            answers.append(try await Self.deviceUpgrade(relay, "robot-8", secret: "wrong", from: "127.0.0.5"))
            // ... but not against another address (the refused attempt took nothing there).
            answers.append(try await Self.deviceUpgrade(relay, "robot-8", secret: "wrong", from: "127.0.0.6"))
            // Every valid robot behind the shared address gets in, robot-7 too once it signs right.
            answers.append(try await Self.deviceUpgrade(relay, "robot-9", secret: nil, from: "127.0.0.5"))
            answers.append(try await Self.deviceUpgrade(relay, "robot-7", secret: nil, from: "127.0.0.5"))
            #expect(answers.map { $0.split(separator: " ")[1] } == ["401", "401", "429", "429", "401", "101", "101"])
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
            #expect(try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 198.51.100.7\r\n") == "HTTP/1.1 429 Too Many Requests")
            // ... over HTTP links too, and the edge's own header cannot be forged to escape it ...
            let link = try RawConnection.open(port: relay.port)
            let answer = try link.exchange(
                "POST /api/link HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bad\r\nX-Forwarded-For: 198.51.100.7\r\n"
                    + "Relay-Client-Address: 192.0.2.1\r\nContent-Length: 0\r\n\r\n"
            )
            #expect(answer.head.hasPrefix("HTTP/1.1 429"), "\(answer.head)")
            // ... while its valid token gets in, and another client's failure behind the same proxy is its own.
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(token)", headers: "X-Forwarded-For: 198.51.100.7\r\n") == "HTTP/1.1 101 Switching Protocols")
            #expect(try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 198.51.100.8\r\n") == "HTTP/1.1 401 Unauthorized")
        }
        try await TestRelay.run(limits) { relay in
            // Not a trusted proxy: X-Forwarded-For is whatever the client wrote, and ignored.
            for _ in 0..<2 { _ = try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 198.51.100.7\r\n") }
            let answer = try await Self.upgrade(relay, "/ws/app?token=bad", headers: "X-Forwarded-For: 198.51.100.8\r\n")
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
            let sameClient = try await Self.upgrade(relay, "/ws/app?token=bad", prefix: Self.proxyV2([198, 51, 100, 7]))
            #expect(sameClient == "HTTP/1.1 429 Too Many Requests")
            // Another client through the proxy has a budget of its own, with either version.
            let another = try await Self.upgrade(relay, "/ws/app?token=bad", prefix: Self.proxyV2([198, 51, 100, 8]))
            #expect(another == "HTTP/1.1 401 Unauthorized")
            let other = Array("PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n".utf8)
            #expect(try await Self.upgrade(relay, "/ws/app?token=bad", prefix: other) == "HTTP/1.1 401 Unauthorized")
            // The client that failed still gets in with a valid token.
            #expect(try await Self.upgrade(relay, "/ws/app?token=\(token)", prefix: v1) == "HTTP/1.1 101 Switching Protocols")
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
        #expect(CIDR("10.0.0.0/33") == nil && CIDR("not-an-address") == nil && CIDR("10.0.0.0/x") == nil && CIDR("") == nil && CIDR("/8") == nil)
    }
}
