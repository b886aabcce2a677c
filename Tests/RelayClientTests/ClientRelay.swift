/// A real `relay serve` process for the client library's tests, and the credentials its clients use.
import DeviceAuth
import Foundation
import RelayClient
import RelayTestSupport
import Synchronization

/// `relay serve` on a loopback port with a store of its own; `restarted` replaces the process
/// with the next one on the same port and store.
final class ClientRelay: Sendable {
    static let jwtSecret = "test-jwt-secret-test-jwt-secret-00"
    static let masterKey = "test-master-key-test-master-key-00"
    static var binary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("relay")
    }

    let environment: [String: String]
    private let process: Mutex<RelayProcess>
    /// Every client made here, closed when the test ends.
    private let clients = Mutex<[RelayClient]>([])

    var port: Int { process.withLock { $0.port } }
    var url: String { "ws://127.0.0.1:\(port)" }

    private init(environment: [String: String], process: RelayProcess) {
        self.environment = environment
        self.process = Mutex(process)
    }

    /// Runs `body` against a relay started with `environment` (plus test secrets and a store).
    static func run(_ environment: [String: String] = [:], _ body: (ClientRelay) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relay-client-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let environment = ["RELAY_JWT_SECRET": jwtSecret, "RELAY_DEVICE_MASTER_KEY": masterKey, "RELAY_DB": directory.path + "/relay.sqlite"]
            .merging(environment) { $1 }
        let relay = ClientRelay(environment: environment, process: try await RelayProcess.start(binary: binary, environment: environment))
        defer { relay.process.withLock { $0.kill() } }
        do {
            try await body(relay)
        } catch {
            await relay.closeClients()
            throw error
        }
        await relay.closeClients()
    }

    private func closeClients() async {
        for client in clients.withLock({ $0 }) { await client.close() }
    }

    /// `client`, closed when the test ends.
    func kept(_ client: RelayClient) -> RelayClient {
        clients.withLock { $0.append(client) }
        return client
    }

    /// Sends SIGTERM, runs `meanwhile` while the relay drains, and starts the next process on
    /// the same port and store once this one has exited.
    func restarted(meanwhile: () async throws -> Void) async throws {
        let old = process.withLock { $0 }
        kill(old.process.processIdentifier, SIGTERM)
        try await meanwhile()
        _ = try await old.process.exited()
        let next = try await RelayProcess.start(binary: Self.binary, environment: environment.merging(["RELAY_PORT": String(old.port)]) { $1 })
        process.withLock { $0 = next }
    }

    /// A device's secret as a relay without a registry entry derives it from its master key.
    func secret(_ deviceID: String) -> String {
        DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: Self.masterKey)
    }

    /// A device; its secret is derived from the master key unless given.
    func device(_ deviceID: String, secret: String? = nil, options: RelayClient.Options = .init()) throws -> RelayClient {
        kept(try RelayClient.device(url: url, id: deviceID, secret: secret ?? self.secret(deviceID), options: options))
    }

    func appToken(_ userID: String = "alice", devices: [String] = ["robot-1"], lifetime: Double = 600) throws -> String {
        try AppTokenSigner(secret: Array(Self.jwtSecret.utf8)).token(userID: userID, devices: devices, now: Date().timeIntervalSince1970, lifetime: lifetime)
    }

    /// An app of `userID` with a token valid for 10 minutes, unless `token` provides them.
    func app(_ userID: String = "alice", options: RelayClient.Options = .init(), token: RelayClient.TokenProvider? = nil) throws -> RelayClient {
        let fixed = try appToken(userID)
        return kept(try RelayClient.app(url: url, options: options, token: token ?? { fixed }))
    }

    /// `relay <arguments>` on this relay's store; its standard output.
    func command(_ arguments: String...) async throws -> String {
        let environment = self.environment
        return try await withDeadline(.seconds(30), "relay \(arguments.joined(separator: " "))") {
            try await onOwnThread {
                let child = try ChildProcess.run(
                    Self.binary.path, arguments,
                    environment: environment.merging(["PATH": "/usr/bin:/bin"]) { old, _ in old },
                    directory: FileManager.default.temporaryDirectory.path,
                    standardOutput: .pipe
                )
                let output = child.standardOutput!.readDataToEndOfFile()
                guard child.waitUntilExit() == 0 else { throw CommandFailed(arguments: arguments) }
                return String(decoding: output, as: UTF8.self)
            }
        }
    }
}

struct CommandFailed: Error {
    var arguments: [String]
}
