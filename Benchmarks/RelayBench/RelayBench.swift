import ArgumentParser
import Configuration
import DeviceAuth
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Relay
import RelayTestSupport
import TURNBroker

/// Measures the relay on loopback and prints figures. Not a test: numbers depend on the machine,
/// so compare them as ratios within one run.
@main
struct RelayBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-bench",
        abstract: "Benchmarks and a soak of the relay on loopback.",
        subcommands: [TURNBench.self, Soak.self, SlowReader.self],
        defaultSubcommand: TURNBench.self
    )
}

/// Bootstraps logging once, quietly, for a benchmark run.
func quietLogging() {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = .error
        return handler
    }
}

struct TURNBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "turn",
        abstract: "TURN broker overhead per mint, and session set-up latency with a slow upstream."
    )

    @Option(help: "Mints to time for the broker overhead.") var mints = 2000
    @Option(help: "Sessions to set up one after another.") var sessions = 40
    @Option(help: "Sessions set up at once while a bystander pings.") var concurrent = 20
    @Option(help: "Upstream latency for the set-up figures, in ms.") var upstreamMs = 100

    func run() async throws {
        quietLogging()
        try await brokerOverhead()
        try await sessionSetUp()
    }

    /// The broker's own cost per mint: the same loopback POST to a fake that answers at once,
    /// raw through libcurl and through `CloudflareProvider` (request building, parsing, port-53
    /// filtering, the credential document).
    func brokerOverhead() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            var configuration = CurlClient.Configuration()
            configuration.allowPlainHTTP = true
            let client = CurlClient(configuration: configuration)
            let provider = CloudflareProvider(
                configuration: .init(keyID: fake.keyID, apiToken: fake.apiToken, baseURL: base),
                client: client,
                logger: Logger(label: "bench")
            )
            let url = "\(base)/turn/keys/\(fake.keyID)/credentials/generate-ice-servers"
            let headers = ["Authorization: Bearer \(fake.apiToken)", "Content-Type: application/json"]
            let body = Array(#"{"ttl":3600,"customIdentifier":"bench"}"#.utf8)
            for _ in 0..<100 { _ = try await client.post(url: url, headers: headers, body: body) }
            var raw: [Double] = []
            var broker: [Double] = []
            for index in 0..<mints {
                // Interleaved, so drift on the machine hits both alike.
                raw.append(try await Self.time { _ = try await client.post(url: url, headers: headers, body: body) })
                broker.append(try await Self.time { _ = try await provider.mint(ttl: 3600, identifier: "bench-\(index)") })
            }
            try await client.shutdown()
            print("TURN broker, \(mints) mints against a local fake answering at once (µs):")
            print(Self.row("raw libcurl POST", raw))
            print(Self.row("CloudflareProvider.mint", broker))
            let overhead = Self.median(broker) - Self.median(raw)
            print(
                String(
                    format: "  broker overhead per mint: %.0f µs (median), %.2fx the raw round trip",
                    overhead,
                    Self.median(broker) / Self.median(raw)
                )
            )
        }
    }

    /// Set-up latency (webrtc_request → webrtc_credentials) with a slow upstream, and what that
    /// slowness does to everyone else: a bystander link's ping round trip, idle and while
    /// `concurrent` sessions wait on the upstream.
    func sessionSetUp() async throws {
        let fake = FakeCloudflareTURN(latency: .milliseconds(upstreamMs))
        let sessions = sessions
        let concurrent = concurrent
        let upstreamMs = upstreamMs
        try await fake.run { base in
            let environment = [
                "RELAY_JWT_SECRET": "bench-jwt-secret-bench-jwt-secret-00",
                "RELAY_DEVICE_MASTER_KEY": "bench-master-key-bench-master-key-0",
                "RELAY_PORT": "0",
                "RELAY_DB": FileManager.default.temporaryDirectory.appendingPathComponent("relay-bench-\(UUID().uuidString).sqlite").path,
                // The bystander pings faster than a link's default message budget, and every
                // client connects from 127.0.0.1.
                "RELAY_RATE_BURST": "1000",
                "RELAY_RATE_PER_S": "1000",
                "RELAY_CONNECT_BURST": "1000",
                "RELAY_TURN_PROVIDER": "cloudflare",
                "CLOUDFLARE_TURN_KEY_ID": fake.keyID,
                "CLOUDFLARE_TURN_API_TOKEN": fake.apiToken,
                "CLOUDFLARE_TURN_API_BASE": base,
            ]
            let configuration = try RelayConfiguration(
                reader: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment))
            )
            var logger = Logger(label: "relay")
            logger.logLevel = .error
            let app = try await buildApplication(configuration: configuration, logger: logger)
            try await app.test(.live) { client in
                let port = client.port!
                let connect = Connector(port: port, environment: environment)
                let device = try await connect.device("bench-robot")
                let app = try await connect.app("bench-user", devices: ["bench-robot"])
                var setUp: [Double] = []
                for _ in 0..<sessions {
                    var sessionID = ""
                    setUp.append(
                        try await Self.time {
                            try app.send(["type": "webrtc_request", "device_id": "bench-robot"])
                            sessionID = try await app.next("webrtc_credentials")["session_id"] as! String
                        }
                    )
                    _ = try await device.next("webrtc_request")
                    try app.send(["type": "webrtc_close", "session_id": sessionID])
                    _ = try await app.next("webrtc_close")
                    _ = try await device.next("webrtc_close")
                }
                print("\nSession set-up with an upstream taking \(upstreamMs) ms, \(sessions) sessions one after another (µs):")
                print(Self.row("request → credentials", setUp))

                let bystander = try await connect.app("bystander", devices: [])
                let idle = try await Self.pings(bystander, count: 200)
                let apps = try await (0..<concurrent).asyncMap { index in try await connect.app("user-\(index)", devices: ["robot-\(index)"]) }
                let devices = try await (0..<concurrent).asyncMap { index in try await connect.device("robot-\(index)") }
                for (index, app) in apps.enumerated() { try app.send(["type": "webrtc_request", "device_id": "robot-\(index)"]) }
                let busy = try await Self.pings(bystander, count: 200)
                for app in apps { _ = try await app.next("webrtc_credentials") }
                for device in devices { _ = try await device.next("webrtc_request") }
                print("\nA bystander's ping round trip (µs), idle and while \(concurrent) set-ups wait \(upstreamMs) ms on the upstream:")
                print(Self.row("idle", idle))
                print(Self.row("during set-ups", busy))
                print(String(format: "  median ratio during/idle: %.2fx", Self.median(busy) / Self.median(idle)))
            }
        }
    }

    static func pings(_ socket: TestSocket, count: Int) async throws -> [Double] {
        var rtts: [Double] = []
        for _ in 0..<count {
            rtts.append(
                try await time {
                    try socket.send(["type": "ping"])
                    _ = try await socket.next("pong")
                }
            )
        }
        return rtts
    }

    static func time(_ body: () async throws -> Void) async throws -> Double {
        let start = ContinuousClock.now
        try await body()
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) * 1e6 + Double(elapsed.components.attoseconds) / 1e12
    }

    static func median(_ values: [Double]) -> Double { percentile(values, 0.5) }

    static func percentile(_ values: [Double], _ fraction: Double) -> Double {
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * fraction + 0.5))]
    }

    static func row(_ name: String, _ values: [Double]) -> String {
        String(
            format: "  %@ p50 %8.0f   p90 %8.0f   p99 %8.0f   mean %8.0f",
            name.padding(toLength: 26, withPad: " ", startingAt: 0),
            percentile(values, 0.5),
            percentile(values, 0.9),
            percentile(values, 0.99),
            values.reduce(0, +) / Double(values.count)
        )
    }
}

/// Starts the `relay` binary built beside this one, with development secrets, the message-rate
/// limits lifted (these runs measure other things) and `extra` settings.
func startRelayBinary(_ extra: [String: String] = [:]) async throws -> (RelayProcess, Connector) {
    let (binary, environment) = relayBinary(extra)
    let relay = try await RelayProcess.start(binary: binary, environment: environment)
    return (relay, Connector(port: relay.port, environment: environment))
}

/// The `relay` binary built beside this one, and its environment: development secrets, the
/// message-rate limits lifted, and `extra` settings.
func relayBinary(_ extra: [String: String] = [:]) -> (URL, [String: String]) {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("relay")
    var environment = [
        "RELAY_JWT_SECRET": "bench-jwt-secret-bench-jwt-secret-00",
        "RELAY_DEVICE_MASTER_KEY": "bench-master-key-bench-master-key-0",
        "RELAY_RATE_BURST": "100000",
        "RELAY_RATE_PER_S": "100000",
    ]
    // The relays log at the level the bench runs with, if one is set.
    if let level = ProcessInfo.processInfo.environment["RELAY_LOG_LEVEL"] { environment["RELAY_LOG_LEVEL"] = level }
    environment.merge(extra) { _, new in new }
    return (binary, environment)
}

/// Connects benchmark clients with credentials made from the relay's configuration.
struct Connector {
    let port: Int
    let environment: [String: String]

    /// An app of `user`; `resume` is `&resume_token=...&last_seq=N` or empty.
    func app(_ user: String, devices: [String], resume: String = "") async throws -> TestSocket {
        let token = try AppTokenSigner(secret: Array(environment["RELAY_JWT_SECRET"]!.utf8))
            .token(userID: user, devices: devices, now: Date().timeIntervalSince1970, lifetime: 3600)
        return try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/app?token=\(token)\(resume)")
    }

    func device(_ deviceID: String, resume: String = "") async throws -> TestSocket {
        let secret = DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: environment["RELAY_DEVICE_MASTER_KEY"]!)
        let signature = DeviceSignature.sign(
            deviceID: deviceID,
            timestamp: Int(Date().timeIntervalSince1970),
            nonce: DeviceSignature.makeNonce(),
            secret: secret
        )
        return try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/device?\(signature.query)\(resume)")
    }
}

extension Range<Int> {
    func asyncMap<T>(_ transform: (Int) async throws -> T) async throws -> [T] {
        var results: [T] = []
        for index in self { results.append(try await transform(index)) }
        return results
    }
}
