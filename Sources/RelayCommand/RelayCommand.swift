/// The `relay` command: `serve`, `token`, `sign-url`, `device`.
import ArgumentParser
import Configuration
import DeviceAuth
import Foundation
import Hummingbird
import Logging
import NIOCore
import Registry
import Relay
import RelayCore
import SystemPackage

@main
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "WebRTC signaling relay between mobile apps and robots.",
        version: "relay \(RelayBuild.description)",
        subcommands: [Serve.self, Device.self, Token.self, SignURL.self, Config.self],
        defaultSubcommand: Serve.self
    )

    /// One event loop per CPU the process may run on: pinned to fewer CPUs than the machine
    /// has (`taskset`), more loops would only take turns on them, and a message read on a loop
    /// waiting for its turn waits a scheduler slice.
    static func main() async {
        if let cpus = allowedCPUCount() { NIOSingletons.groupLoopCountSuggestion = cpus }
        await main(nil)
    }
}

/// CPUs this process may run on (its affinity: `taskset`, cpusets), from `/proc/self/status`.
func allowedCPUCount() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
    else { return nil }
    var count = 0
    for range in line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces).split(separator: ",") {
        let bounds = range.split(separator: "-").compactMap { Int($0) }
        guard let first = bounds.first, let last = bounds.last, last >= first else { return nil }
        count += last - first + 1
    }
    return count > 0 ? count : nil
}

/// Where every command's settings come from: flags, then the environment, then a `.env` file.
struct SettingsOptions: ParsableArguments {
    @Option(name: .customLong("env-file"), help: "Read settings from this file (default: ./.env when there is one).") var envFile: String?

    /// The settings, `overrides` (from flags) first. A `.env` line a shell would read
    /// differently, a missing `--env-file`, or a `RELAY_*` key that is no setting stops the
    /// command with one line per problem (exit 78).
    func reader(command: String, overrides: [String: String] = [:]) throws -> ConfigReader {
        var environment = ProcessInfo.processInfo.environment
        let links = environment.filter { RelayConfiguration.isServiceLink($0.key, value: $0.value) }.keys.sorted()
        if !links.isEmpty {
            for name in links { environment[name] = nil }
            printError(
                "\(command): warning: ignoring Kubernetes service-link variables (a Service named relay...): \(links.joined(separator: ", "))"
                    + " (set enableServiceLinks: false in the pod spec to drop them)"
            )
        }
        var fromFile: [(name: String, value: String)] = []
        var problems: [String] = []
        let path = envFile ?? ".env"
        if let data = FileManager.default.contents(atPath: path) {
            do {
                fromFile = try DotEnv.parse(String(decoding: data, as: UTF8.self), path: path, environment: environment)
            } catch {
                problems += error.problems
            }
        } else if envFile != nil {
            problems.append("cannot read the settings file \(path) (--env-file)")
        }
        problems += RelayConfiguration.unknownKeyProblems(Array(environment.keys) + fromFile.map(\.name))
        guard problems.isEmpty else {
            for problem in problems { printError("\(command): configuration: \(problem)") }
            throw ExitCode(78)
        }
        var providers: [any ConfigProvider] = []
        if !overrides.isEmpty { providers.append(EnvironmentVariablesProvider(environmentVariables: overrides)) }
        providers.append(EnvironmentVariablesProvider(environmentVariables: environment))
        providers.append(EnvironmentVariablesProvider(environmentVariables: Dictionary(fromFile, uniquingKeysWith: { _, last in last })))
        return ConfigReader(providers: providers)
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the relay.")

    @Option(help: "Address to listen on (overrides RELAY_HOST).") var host: String?
    @Option(help: "Port to listen on (overrides RELAY_PORT).") var port: Int?
    @Flag(help: "Development mode: with no secrets configured, make some up (this machine only).") var dev = false
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        // Until its reloader traps it, a SIGHUP (logrotate, a closed terminal) must not end the
        // relay: ignored from the first step (the reloader's trap keeps it ignored).
        signal(SIGHUP, SIG_IGN)
        var overrides: [String: String] = [:]
        if let host { overrides["RELAY_HOST"] = host }
        if let port { overrides["RELAY_PORT"] = String(port) }
        let configuration: RelayConfiguration
        do {
            configuration = try RelayConfiguration(reader: try settings.reader(command: "relay", overrides: overrides), development: dev)
        } catch let invalid as RelayConfiguration.Invalid {
            for problem in invalid.problems { printError("relay: configuration: \(problem)") }
            throw ExitCode(78)
        }
        let level = configuration.logLevel
        let format = configuration.logFormat
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = TextLogHandler(label: label)
                handler.logLevel = level
                return handler
            case .json:
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
        }
        if let development = configuration.development {
            printDevelopmentBanner(development, configuration: configuration)
        }
        let logger = Logger(label: "relay")
        logger.notice(
            "Relay \(RelayBuild.version) starting",
            metadata: [
                "relay.version": "\(RelayBuild.version)", "relay.revision": "\(RelayBuild.revision)",
                "relay.store": "\(configuration.databaseURL == nil ? "sqlite" : "postgresql")",
            ]
        )
        do {
            try await runRelay(configuration: configuration, logger: logger)
        } catch let error as StoreError {
            // A store that cannot be opened (or a fleet that lost this node) stops it with one line.
            printError("relay: \(error) (\(configuration.databaseURL == nil ? "RELAY_DB" : "RELAY_DATABASE_URL"))")
            throw ExitCode(1)
        }
    }

    private func printDevelopmentBanner(_ secrets: RelayConfiguration.DevelopmentSecrets, configuration: RelayConfiguration) {
        let now = Date().timeIntervalSince1970
        let token =
            (try? AppTokenSigner(secret: Array(secrets.jwtSecret.utf8)).token(userID: "dev-user", devices: ["robot-1"], now: now, lifetime: 86_400))
            ?? "?"
        let deviceSecret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: secrets.deviceMasterKey)
        let signature = DeviceSignature.sign(deviceID: "robot-1", timestamp: Int(now), nonce: DeviceSignature.makeNonce(), secret: deviceSecret)
        let base = "ws://\(configuration.host):\(configuration.port)"
        let rule = String(repeating: "!", count: 78)
        printError(
            """
            \(rule)
            DEVELOPMENT MODE (--dev): nothing is configured, so this relay made up its own secrets.
            They change on every start. Do not use this relay for anything real: set
            RELAY_JWT_SECRET and RELAY_DEVICE_MASTER_KEY (see .env.example).

              RELAY_JWT_SECRET=\(secrets.jwtSecret)
              RELAY_DEVICE_MASTER_KEY=\(secrets.deviceMasterKey)
              TURN provider: static (STUN only)
              Registry and audit log: \(configuration.databasePath) (relay device add <id> --owner <user>)

            Try it (app 'dev-user' may reach device 'robot-1'):
              app:    \(base)/ws/app?token=\(token)
              device: \(base)/ws/device?\(signature.query)
                      (the device URL works once, within \(configuration.deviceSignatureWindowSeconds) s; make more with
                       relay sign-url robot-1 --master-key <RELAY_DEVICE_MASTER_KEY>)
            \(rule)
            """
        )
    }
}

/// `relay config check`: the settings as `serve` would read them, without serving.
struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check the relay's settings.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read the settings as serve does: one line per problem and exit 78, or say they are valid."
        )

        @OptionGroup var settings: SettingsOptions

        func run() async throws {
            do {
                _ = try RelayConfiguration(reader: try settings.reader(command: "relay config check"))
            } catch let invalid as RelayConfiguration.Invalid {
                for problem in invalid.problems { printError("relay config check: \(problem)") }
                throw ExitCode(78)
            }
            print("relay config check: the settings are valid")
        }
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an HS256 app token signed with RELAY_JWT_SECRET.")

    @Option(help: "The user id (sub).") var sub: String
    @Option(name: .customLong("device"), help: "A device id the token may reach (repeat for several).") var devices: [String] = []
    @Option(help: "Lifetime in seconds.") var ttl: Int = 3600
    @Option(help: "Sign with this secret instead of RELAY_JWT_SECRET.") var secret: String?
    @Option(help: "Put this kid in the token's header.") var kid: String?
    @Option(help: "The control role (claim control): observe, drive or supervise; none: drive.") var control: String?
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        let reader = try settings.reader(command: "relay token")
        let role = control.flatMap(ControlRole.init(rawValue:))
        guard control == nil || role != nil else {
            printError("relay token: --control must be observe, drive or supervise")
            throw ExitCode(2)
        }
        guard let secret = secret ?? reader.string(forKey: ["relay", "jwt", "secret"], isSecret: true), !secret.isEmpty else {
            printError("relay token: RELAY_JWT_SECRET is not set (in the environment or .env); pass --secret")
            throw ExitCode(2)
        }
        guard ttl > 0 else {
            printError("relay token: --ttl must be positive")
            throw ExitCode(2)
        }
        for device in devices where !DeviceSignature.isValidDeviceID(device) {
            printError("relay token: '\(device)' is not a valid device id (1-128 characters of [A-Za-z0-9._:-])")
            throw ExitCode(2)
        }
        let token = try AppTokenSigner(secret: Array(secret.utf8), keyID: kid).token(
            userID: sub,
            devices: devices.isEmpty ? nil : devices,
            now: Date().timeIntervalSince1970,
            lifetime: Double(ttl),
            issuer: reader.string(forKey: ["relay", "jwt", "issuer"]),
            audience: reader.string(forKey: ["relay", "jwt", "audience"]),
            control: role
        )
        print(token)
    }
}

struct SignURL: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign-url",
        abstract: "Print a signed device URL (valid once, within the signature window)."
    )

    @Argument(help: "The device id.") var deviceID: String
    @Option(help: "The device's own secret.") var secret: String?
    @Option(name: .customLong("master-key"), help: "Derive the device secret from this master key (default: RELAY_DEVICE_MASTER_KEY).") var masterKey:
        String?
    @Option(help: "The relay's base URL (default: ws://RELAY_HOST:RELAY_PORT).") var url: String?
    @OptionGroup var settings: SettingsOptions

    func run() async throws {
        guard DeviceSignature.isValidDeviceID(deviceID) else {
            printError("relay sign-url: '\(deviceID)' is not a valid device id (1-128 characters of [A-Za-z0-9._:-])")
            throw ExitCode(2)
        }
        let reader = try settings.reader(command: "relay sign-url")
        let deviceSecret: String
        if let secret {
            deviceSecret = secret
        } else if let masterKey = masterKey ?? reader.string(forKey: ["relay", "device", "master", "key"], isSecret: true), !masterKey.isEmpty {
            deviceSecret = DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: masterKey)
        } else {
            printError("relay sign-url: pass --secret, or --master-key, or set RELAY_DEVICE_MASTER_KEY")
            throw ExitCode(2)
        }
        let base =
            url
            ?? "ws://\(reader.string(forKey: ["relay", "host"], default: "127.0.0.1")):\(reader.string(forKey: ["relay", "port"], default: "8080"))"
        let signature = DeviceSignature.sign(
            deviceID: deviceID,
            timestamp: Int(Date().timeIntervalSince1970),
            nonce: DeviceSignature.makeNonce(),
            secret: deviceSecret
        )
        print("\(base.hasSuffix("/") ? String(base.dropLast()) : base)/ws/device?\(signature.query)")
    }
}
