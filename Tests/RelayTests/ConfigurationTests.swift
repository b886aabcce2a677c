import Foundation
import Configuration
import Relay
import RelayTestSupport
import Testing

/// Start-up configuration: one clear line per problem, and a loud development mode.
@Suite struct ConfigurationTests {
    func read(_ variables: [String: String], development: Bool = false) -> Result<RelayConfiguration, RelayConfiguration.Invalid> {
        do {
            return .success(
                try RelayConfiguration(
                    reader: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: variables)),
                    development: development
                )
            )
        } catch {
            return .failure(error)
        }
    }

    @Test func devWithNothingConfiguredMeansDevelopmentModeWithFreshSecrets() throws {
        let first = try read([:], development: true).get()
        let second = try read([:], development: true).get()
        let development = try #require(first.development)
        #expect(development.jwtSecret.count == 64)
        #expect(development.jwtSecret != second.development?.jwtSecret)
        #expect(first.deviceMasterKey == development.deviceMasterKey)
        #expect(first.host == "127.0.0.1" && first.port == 8080)
    }

    @Test func developmentModeIsOnlyAskedForAndOnlyOnThisMachine() {
        let secret = String(repeating: "s", count: 32)
        #expect(
            read([:]).problems == [
                "nothing is configured: set RELAY_JWT_SECRET and RELAY_DEVICE_MASTER_KEY (see .env.example), or try the relay with made-up secrets: relay serve --dev"
            ]
        )
        #expect(
            read(["RELAY_HOST": "0.0.0.0"], development: true).problems == [
                "--dev serves only this machine (RELAY_HOST 127.0.0.1, ::1 or localhost), not '0.0.0.0': its secrets are made up"
            ]
        )
        #expect(
            read(["RELAY_JWT_SECRET": secret], development: true).problems == [
                "--dev makes up the secrets of a relay with none configured, but this one has some: leave out --dev"
            ]
        )
        #expect(read([:], development: true).problems.isEmpty)
    }

    @Test func aKeyThatIsNoSettingIsNamedWithTheClosestOne() {
        #expect(
            RelayConfiguration.unknownKeyProblems(["RELAY_HEARTBEAT_SEC", "RELAY_JWT_SECRET", "PATH", "RELAY_JWT_SECERT", "CLOUDFLARE_TURN_KEYID"]) == [
                "CLOUDFLARE_TURN_KEYID is not a setting of the relay (did you mean CLOUDFLARE_TURN_KEY_ID?)",
                "RELAY_HEARTBEAT_SEC is not a setting of the relay (did you mean RELAY_HEARTBEAT_S?)",
                "RELAY_JWT_SECERT is not a setting of the relay (did you mean RELAY_JWT_SECRET?)",
            ]
        )
    }

    @Test func theExampleFileListsEveryKeyTheRelayReads() throws {
        let example = try String(contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.env.example").path, encoding: .utf8)
        let listed = Set(example.split(separator: "\n").compactMap { line -> String? in
            let text = line.drop { $0 == "#" || $0 == " " }
            guard let equals = text.firstIndex(of: "="), text[..<equals].allSatisfy({ $0.isUppercase || $0.isNumber || $0 == "_" }) else { return nil }
            return String(text[..<equals])
        })
        #expect(listed == RelayConfiguration.knownKeys)
    }

    @Test func aDotEnvIsReadAsAShellReadsIt() throws {
        let text = """
            # a comment
            export RELAY_JWT_SECRET="quoted secret with \\"escapes\\" and $HOME"
            RELAY_DEVICE_MASTER_KEY='single $quoted'   # trailing comment
              RELAY_PORT=8081#not-a-comment
            RELAY_HOST=127.0.0.1 # comment
            RELAY_DB=${BASE}/relay.sqlite
            RELAY_LOG_LEVEL=a\\ b
            RELAY_ADMIN_TOKEN="spans
            two lines"
            RELAY_EMPTY=

            """
        let parsed = try DotEnv.parse(text, path: ".env", environment: ["HOME": "/home/robot", "BASE": "/var/lib/relay"])
        #expect(parsed.map(\.name) == [
            "RELAY_JWT_SECRET", "RELAY_DEVICE_MASTER_KEY", "RELAY_PORT", "RELAY_HOST", "RELAY_DB", "RELAY_LOG_LEVEL", "RELAY_ADMIN_TOKEN", "RELAY_EMPTY",
        ])
        #expect(parsed.map(\.value) == [
            #"quoted secret with "escapes" and /home/robot"#, "single $quoted", "8081#not-a-comment", "127.0.0.1", "/var/lib/relay/relay.sqlite",
            "a b", "spans\ntwo lines", "",
        ])
    }

    @Test func aDotEnvLineAShellWouldReadDifferentlyIsAProblem() {
        let text = "RELAY_PORT = 8080\nRELAY_HOST=two words\nRELAY_DB=\"open\n"
        #expect(throws: DotEnv.Invalid.self) { try DotEnv.parse(text, path: "x.env") }
        do {
            _ = try DotEnv.parse(text, path: "x.env")
        } catch {
            #expect(error.problems == [
                "x.env line 1: no spaces around '=' (a shell would run 'RELAY_PORT' as a command)",
                "x.env line 2: a space inside an unquoted value: quote the value",
                "x.env line 3: unterminated double quote",
            ])
        }
    }

    @Test func tlsNeedsACertificateAndAKeyThatCanBeRead() {
        let secret = String(repeating: "s", count: 32)
        #expect(
            read(["RELAY_JWT_SECRET": secret, "RELAY_TLS_CERT_FILE": "/nonexistent/cert.pem"]).problems == [
                "RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE go together: set both or neither"
            ]
        )
        let unreadable = read(["RELAY_JWT_SECRET": secret, "RELAY_TLS_CERT_FILE": "/nonexistent/cert.pem", "RELAY_TLS_KEY_FILE": "/nonexistent/key.pem"])
        #expect(unreadable.problems.count == 1)
        #expect(unreadable.problems.first?.hasPrefix("RELAY_TLS_CERT_FILE/RELAY_TLS_KEY_FILE: cannot read a PEM certificate chain from /nonexistent/cert.pem") == true)
        #expect(read(["RELAY_JWT_SECRET": secret, "RELAY_TRUSTED_PROXIES": "10.0.0.0/8, ::1, nonsense"]).problems == [
            "RELAY_TRUSTED_PROXIES: 'nonsense' is not an IP address or CIDR (such as 10.0.0.0/8 or ::1)"
        ])
    }

    @Test func configuredRelayIsNotInDevelopmentMode() throws {
        let configuration = try read(["RELAY_JWT_SECRET": String(repeating: "s", count: 32), "RELAY_PORT": "9000", "RELAY_HOST": "0.0.0.0"]).get()
        #expect(configuration.development == nil)
        #expect(configuration.deviceMasterKey == nil)
        #expect(configuration.port == 9000 && configuration.host == "0.0.0.0")
    }

    @Test func everyProblemIsReportedOnItsOwnLine() {
        let result = read([
            "RELAY_PORT": "eighty",
            "RELAY_JWT_SECRET": "short",
            "RELAY_JWT_ALGORITHMS": "HS256,none,XX1",
            "RELAY_MAX_SESSIONS_PER_DEVICE": "0",
            "RELAY_TURN_PROVIDER": "carrier-pigeon",
            "STUN_URIS": "http://stun.example",
            "RELAY_LOG_LEVEL": "loud",
        ])
        guard case .failure(let invalid) = result else {
            Issue.record("configuration was accepted")
            return
        }
        #expect(
            invalid.problems == [
                "RELAY_PORT must be an integer from 0 to 65535 (got 'eighty')",
                "RELAY_JWT_ALGORITHMS: 'none' can never be allowed",
                "RELAY_JWT_ALGORITHMS: unknown algorithm 'XX1' (use HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384 or ES512)",
                "RELAY_JWT_SECRET must be at least 32 bytes (try: openssl rand -hex 32)",
                "RELAY_MAX_SESSIONS_PER_DEVICE must be an integer from 1 to 1000 (got '0')",
                "STUN_URIS: 'http://stun.example' is not a stun: or stuns: URI",
                "RELAY_TURN_PROVIDER: unknown provider 'carrier-pigeon' (use static, cloudflare or coturn)",
                "RELAY_LOG_LEVEL: 'loud' is not one of trace, debug, info, notice, warning, error, critical",
            ]
        )
    }

    @Test func storeAndAdminSettingsAreChecked() throws {
        let secret = String(repeating: "s", count: 32)
        let configured = try read(["RELAY_JWT_SECRET": secret, "RELAY_DB": "/var/lib/relay/relay.sqlite", "RELAY_ADMIN_TOKEN": secret]).get()
        #expect(configured.databasePath == "/var/lib/relay/relay.sqlite")
        #expect(configured.adminToken == secret)
        #expect(try read(["RELAY_JWT_SECRET": secret]).get().adminToken == nil)
        guard
            case .failure(let invalid) = read([
                "RELAY_JWT_SECRET": secret, "RELAY_ADMIN_TOKEN": "admin", "RELAY_AUDIT_FLUSH_MS": "0", "RELAY_REGISTRY_POLL_MS": "soon",
            ])
        else {
            Issue.record("configuration was accepted")
            return
        }
        #expect(
            invalid.problems == [
                "RELAY_AUDIT_FLUSH_MS must be an integer from 10 to 10000 (got '0')",
                "RELAY_REGISTRY_POLL_MS must be an integer from 50 to 600000 (got 'soon')",
                "RELAY_ADMIN_TOKEN must be at least 32 bytes (try: openssl rand -hex 32)",
            ]
        )
    }

    @Test func deviceKeyWithoutAnyAppTokenKeyIsAProblem() {
        guard case .failure(let invalid) = read(["RELAY_DEVICE_MASTER_KEY": String(repeating: "m", count: 32)]) else {
            Issue.record("configuration was accepted")
            return
        }
        #expect(invalid.problems == ["RELAY_JWT_SECRET, RELAY_JWT_PUBLIC_KEY_FILE, RELAY_JWT_JWKS_FILE or RELAY_JWT_JWKS_URL is required to verify app tokens"])
    }

    @Test func allowedAlgorithmsNeedAKey() {
        guard case .failure(let invalid) = read(["RELAY_JWT_SECRET": String(repeating: "s", count: 32), "RELAY_JWT_ALGORITHMS": "RS256"]) else {
            Issue.record("configuration was accepted")
            return
        }
        #expect(invalid.problems == ["RELAY_JWT_ALGORITHMS: no configured key verifies any of RS256"])
    }

    @Test func unreadablePublicKeyFileIsAProblem() {
        guard case .failure(let invalid) = read(["RELAY_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem", "RELAY_JWT_ALGORITHMS": "RS256"]) else {
            Issue.record("configuration was accepted")
            return
        }
        #expect(invalid.problems.first == "RELAY_JWT_PUBLIC_KEY_FILE: cannot read '/nonexistent/key.pem'")
    }
}

@Suite struct TURNConfigurationTests {
    func problems(_ variables: [String: String]) -> [String] {
        do {
            _ = try RelayConfiguration(reader: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: variables)))
            return []
        } catch {
            return error.problems
        }
    }

    @Test func providerWithoutItsSettingsStopsStartUp() {
        let secret = ["RELAY_JWT_SECRET": String(repeating: "s", count: 32)]
        #expect(
            problems(secret.merging(["RELAY_TURN_PROVIDER": "cloudflare"]) { $1 }) == [
                "RELAY_TURN_PROVIDER=cloudflare needs CLOUDFLARE_TURN_KEY_ID",
                "RELAY_TURN_PROVIDER=cloudflare needs CLOUDFLARE_TURN_API_TOKEN",
            ]
        )
        #expect(
            problems(secret.merging(["RELAY_TURN_PROVIDER": "coturn"]) { $1 }) == [
                "RELAY_TURN_PROVIDER=coturn needs TURN_SHARED_SECRET (coturn's static-auth-secret)",
                "RELAY_TURN_PROVIDER=coturn needs TURN_URIS (comma separated turn: or turns: URIs)",
            ]
        )
        #expect(
            problems(secret.merging(["RELAY_TURN_PROVIDER": "coturn", "TURN_SHARED_SECRET": "x", "TURN_URIS": "stun:a:3478"]) { $1 }) == [
                "TURN_URIS: 'stun:a:3478' is not a turn: or turns: URI"
            ]
        )
        #expect(
            problems(
                secret.merging([
                    "RELAY_TURN_PROVIDER": "cloudflare", "CLOUDFLARE_TURN_KEY_ID": "k", "CLOUDFLARE_TURN_API_TOKEN": "t",
                    "CLOUDFLARE_TURN_API_BASE": "http://turn.example.com/v1",
                ]) { $1 }
            ) == ["CLOUDFLARE_TURN_API_BASE must be an https:// URL (plain http only on 127.0.0.1 or localhost)"]
        )
    }
}

extension Result where Failure == RelayConfiguration.Invalid {
    /// The problems of a configuration that was refused; none when it was read.
    var problems: [String] {
        if case .failure(let invalid) = self { return invalid.problems }
        return []
    }
}
