import DeviceAuth
import Foundation
import RelayCore
import RelayTestSupport
import Testing

/// The `relay` executable as a robot developer uses it.
@Suite(.timeLimit(.minutes(1))) struct CommandLineTests {
    /// The `relay` binary SwiftPM built beside this test bundle.
    static var relayBinary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("relay")
    }

    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func relay(_ arguments: [String], environment: [String: String] = [:], directory: String? = nil) async throws -> Run {
        try await withDeadline(.seconds(30), "relay \(arguments.joined(separator: " "))") {
            try await onOwnThread { try runRelay(arguments, environment: environment, directory: directory) }
        }
    }

    private static func runRelay(_ arguments: [String], environment: [String: String], directory: String?) throws -> Run {
        let process = try ChildProcess.run(
            relayBinary.path,
            arguments,
            // Only what the test sets: no developer's RELAY_* leaks in. The working directory holds no .env.
            environment: environment.merging(["PATH": "/usr/bin:/bin"]) { old, _ in old },
            directory: directory ?? FileManager.default.temporaryDirectory.path,
            standardOutput: .pipe,
            standardError: .pipe
        )
        let stdout = process.standardOutput!.readDataToEndOfFile()
        let stderr = process.standardError!.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(
            status: process.terminationStatus,
            stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self)
        )
    }

    @Test func relayBinaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: Self.relayBinary.path), "build the package first (swift build)")
    }

    @Test func tokenAndSignURLGetARobotAndAnAppIntoASession() async throws {
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey]
        let token = try await Self.relay(["token", "--sub", "alice", "--device", "robot-1"], environment: environment)
        #expect(token.status == 0)
        try await TestRelay.run { relay in
            let signed = try await Self.relay(["sign-url", "robot-1", "--url", "ws://127.0.0.1:\(relay.port)"], environment: environment)
            #expect(signed.status == 0)
            let url = signed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(url.hasPrefix("ws://127.0.0.1:\(relay.port)/ws/device?device_id=robot-1&ts="))
            let device = try await TestSocket.connect(url)
            let app = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/app?token=\(token.stdout.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
            let (_, request) = try await relay.openSession(app: app, device: device)
            #expect(request["user_id"] as? String == "alice")
        }
    }

    @Test func tokenWritesTheControlRoleAndRefusesAnUnknownOne() async throws {
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret]
        let token = try await Self.relay(["token", "--sub", "carol", "--control", "supervise"], environment: environment)
        #expect(token.status == 0)
        let verifier = AppTokenVerifier(configuration: .init(secretKeys: [.init(secret: Array(TestRelay.jwtSecret.utf8))]))
        let identity = try verifier.verify(token.stdout.trimmingCharacters(in: .whitespacesAndNewlines), now: Date().timeIntervalSince1970)
        #expect(identity.userID == "carol" && identity.controlRole == .supervise)
        let wrong = try await Self.relay(["token", "--sub", "carol", "--control", "pilot"], environment: environment)
        #expect(wrong.status == 2)
        #expect(wrong.stderr.contains("--control must be observe, drive or supervise"))
    }

    @Test func signURLWithTheDevicesOwnSecretMatchesTheContract() async throws {
        let signed = try await Self.relay(["sign-url", "robot-7", "--secret", "s3cret"])
        #expect(signed.status == 0)
        let query = try #require(URLComponents(string: signed.stdout.trimmingCharacters(in: .whitespacesAndNewlines))?.queryItems)
        let value = { (name: String) in query.first { $0.name == name }?.value ?? "" }
        let expected = DeviceSignature.sign(deviceID: "robot-7", timestamp: Int(value("ts"))!, nonce: value("nonce"), secret: "s3cret")
        #expect(value("sig") == expected.signature)
        #expect(signed.stdout.hasPrefix("ws://127.0.0.1:8080/ws/device?"))
    }

    @Test func commandsExplainWhatIsMissing() async throws {
        let token = try await Self.relay(["token", "--sub", "alice"])
        #expect(token.status == 2)
        #expect(token.stderr.contains("RELAY_JWT_SECRET is not set"))
        let signed = try await Self.relay(["sign-url", "robot-1"])
        #expect(signed.status == 2)
        #expect(signed.stderr.contains("pass --secret, or --master-key, or set RELAY_DEVICE_MASTER_KEY"))
        let badDevice = try await Self.relay(["sign-url", "robot 1", "--secret", "s"])
        #expect(badDevice.status == 2)
    }

    @Test func invalidConfigurationStopsStartUpWithOneLinePerProblem() async throws {
        let run = try await Self.relay(["serve"], environment: ["RELAY_PORT": "http", "RELAY_JWT_SECRET": "short", "RELAY_TURN_PROVIDER": "nope"])
        #expect(run.status == 78)
        #expect(
            run.stderr.split(separator: "\n") == [
                "relay: configuration: RELAY_PORT must be an integer from 0 to 65535 (got 'http')",
                "relay: configuration: RELAY_JWT_SECRET must be at least 32 bytes (try: openssl rand -hex 32)",
                "relay: configuration: RELAY_TURN_PROVIDER: unknown provider 'nope' (use static, cloudflare or coturn)",
            ]
        )
    }

    /// What Kubernetes puts in every pod of a namespace with a Service named `relay`.
    static let serviceLinks = [
        "RELAY_SERVICE_HOST": "10.96.0.12", "RELAY_SERVICE_PORT": "8080", "RELAY_SERVICE_PORT_HTTP": "8080",
        "RELAY_PORT": "tcp://10.96.0.12:8080", "RELAY_PORT_8080_TCP": "tcp://10.96.0.12:8080", "RELAY_PORT_8080_TCP_PROTO": "tcp",
        "RELAY_PORT_8080_TCP_PORT": "8080", "RELAY_PORT_8080_TCP_ADDR": "10.96.0.12",
    ]

    /// Issue "The edge, third round", 6: a pod beside a Service named `relay` starts, saying once
    /// what it ignored; a misspelt setting is still named with its likely meaning.
    @Test func kubernetesServiceLinksAreIgnoredWithOneWarningAndAMisspeltSettingIsNot() async throws {
        let secrets = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey]
        let valid = try await Self.relay(["config", "check"], environment: secrets.merging(Self.serviceLinks) { old, _ in old })
        #expect(valid.status == 0, "\(valid.stderr)")
        #expect(valid.stdout == "relay config check: the settings are valid\n")
        let warnings = valid.stderr.split(separator: "\n")
        #expect(warnings.count == 1 && warnings[0].hasPrefix("relay config check: warning: ignoring Kubernetes service-link variables"), "\(valid.stderr)")
        #expect(Self.serviceLinks.keys.allSatisfy { warnings.first?.contains($0) == true })

        var misspelt = secrets.merging(Self.serviceLinks) { old, _ in old }
        misspelt["RELAY_JWT_SECRT"] = TestRelay.jwtSecret
        let refused = try await Self.relay(["config", "check"], environment: misspelt)
        #expect(refused.status == 78)
        #expect(refused.stderr.contains("relay config check: configuration: RELAY_JWT_SECRT is not a setting of the relay (did you mean RELAY_JWT_SECRET?)"))
        // A RELAY_PORT that is a number is the setting, and a wrong one is still refused.
        let port = try await Self.relay(["config", "check"], environment: secrets.merging(["RELAY_PORT": "http"]) { old, _ in old })
        #expect(port.status == 78 && port.stderr.contains("RELAY_PORT must be an integer from 0 to 65535 (got 'http')"))

        // The relay itself starts beside them (its port from the flag: RELAY_PORT is a link here).
        let relay = try await RelayProcess.start(
            binary: Self.relayBinary, environment: secrets.merging(Self.serviceLinks) { old, _ in old }, arguments: ["--port", "0"]
        )
        defer { relay.kill() }
        #expect(relay.recentLog.contains("relay: warning: ignoring Kubernetes service-link variables"))
    }

    @Test func aStoreThatCannotBeOpenedStopsStartUpWithOneLine() async throws {
        try await withTemporaryDirectory { directory in
            // A file where the store's directory should be.
            FileManager.default.createFile(atPath: "\(directory)/not-a-directory", contents: Data("x".utf8))
            let run = try await Self.relay(["serve", "--dev"], environment: ["RELAY_DB": "\(directory)/not-a-directory/relay.sqlite"])
            #expect(run.status == 1)
            let lines = run.stderr.split(separator: "\n").filter { $0.hasPrefix("relay: ") }
            #expect(lines.count == 1)
            #expect(
                lines == [
                    "relay: cannot create \(directory)/not-a-directory/relay.sqlite: \(directory)/not-a-directory is not a directory (RELAY_DB)"
                ]
            )
        }
    }
}
