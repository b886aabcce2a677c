import Configuration
import DeviceAuth
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Registry
import Relay
import RelayTestSupport
import TURNBroker
import Testing

/// The real relay application on a loopback port, configured as an operator would (environment
/// variables), with helpers to mint credentials and connect real clients.
struct TestRelay: Sendable {
    static let jwtSecret = "test-jwt-secret-test-jwt-secret-00"
    static let masterKey = "test-master-key-test-master-key-00"

    let port: Int
    /// The relay's store, opened a second time as the `relay device` commands do.
    let store: RelayStore

    static func configuration(_ environment: [String: String]) throws -> RelayConfiguration {
        var variables = ["RELAY_JWT_SECRET": jwtSecret, "RELAY_DEVICE_MASTER_KEY": masterKey, "RELAY_PORT": "0"]
        variables.merge(environment) { _, new in new }
        return try RelayConfiguration(reader: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: variables)))
    }

    /// Runs `body` against a live relay with a store of its own in a fresh directory.
    static func run(
        _ environment: [String: String] = [:],
        turn: (any TURNProvider)? = nil,
        logs: LogCapture? = nil,
        refreshDelay: (@Sendable (Int) -> Duration)? = nil,
        _ body: @escaping @Sendable (TestRelay) async throws -> Void
    ) async throws {
        var logger = logs?.logger() ?? Logger(label: "relay-test")
        if logs == nil { logger.logLevel = .warning }
        try await withTemporaryDirectory { directory in
            var environment = environment
            environment["RELAY_DB"] = environment["RELAY_DB"] ?? "\(directory)/relay.sqlite"
            let app = try await buildApplication(
                configuration: try configuration(environment),
                dependencies: refreshDelay.map { RelayDependencies(turn: turn, refreshDelay: $0) } ?? RelayDependencies(turn: turn),
                logger: logger
            )
            let store = try RelayStore(path: environment["RELAY_DB"]!)
            // Bounded: a relay that never finishes shutting down fails this test, not the run.
            try await withDeadline(.seconds(100), "the test relay to run and shut down") {
                try await app.test(.live) { client in
                    try await body(TestRelay(port: client.port!, store: store))
                }
            }
        }
    }

    func appToken(_ sub: String = "alice", devices: [String]? = ["robot-1"], lifetime: Double = 600, secret: String = TestRelay.jwtSecret) -> String {
        try! AppTokenSigner(secret: Array(secret.utf8)).token(userID: sub, devices: devices, now: Date().timeIntervalSince1970, lifetime: lifetime)
    }

    func deviceQuery(
        _ deviceID: String = "robot-1",
        secret: String? = nil,
        timestamp: Int? = nil,
        nonce: String = DeviceSignature.makeNonce()
    ) -> String {
        let secret = secret ?? DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: TestRelay.masterKey)
        return DeviceSignature.sign(deviceID: deviceID, timestamp: timestamp ?? Int(Date().timeIntervalSince1970), nonce: nonce, secret: secret).query
    }

    /// An app connected with its token in the Authorization header.
    func app(_ sub: String = "alice", devices: [String]? = ["robot-1"]) async throws -> TestSocket {
        try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/app", headers: [.authorization: "Bearer \(appToken(sub, devices: devices))"])
    }

    func device(_ deviceID: String = "robot-1") async throws -> TestSocket {
        try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/device?\(deviceQuery(deviceID))")
    }

    /// An app asks for a session; returns the app's `webrtc_credentials` and the device's `webrtc_request`.
    func openSession(app: TestSocket, device: TestSocket, deviceID: String = "robot-1") async throws -> (credentials: JSONObject, request: JSONObject)
    {
        try app.send(["type": "webrtc_request", "device_id": deviceID])
        let credentials = try await app.next("webrtc_credentials")
        let request = try await device.next("webrtc_request")
        return (credentials, request)
    }

    /// The body of `GET /healthz`.
    func healthz() async throws -> String {
        let response = try await execute("/healthz", method: .get)
        #expect(response.status == .ok)
        return response.body
    }

    /// A plain GET, for its status and body.
    func get(_ pathAndQuery: String) async throws -> (status: HTTPResponse.Status, body: String) {
        let response = try await execute(pathAndQuery, method: .get)
        return (response.status, response.body)
    }

    /// An HTTP request with an optional bearer token and JSON body; the answer's status and JSON.
    func request(
        _ method: HTTPRequest.Method,
        _ path: String,
        token: String? = nil,
        body: String? = nil
    ) async throws -> (status: HTTPResponse.Status, json: [String: Any]) {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        if body != nil { headers[.contentType] = "application/json" }
        let response = try await execute(path, method: method, headers: headers, body: body)
        return (response.status, Self.json(response.body))
    }

    /// `POST /api/turn/credentials` with `token` (none: no Authorization header) and `body`.
    func mintCredentials(token: String?, body: String? = nil) async throws -> (status: HTTPResponse.Status, headers: HTTPFields, json: [String: Any])
    {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let token { headers[.authorization] = "Bearer \(token)" }
        let response = try await execute("/api/turn/credentials", method: .post, headers: headers, body: body)
        return (response.status, response.headers, Self.json(response.body))
    }

    /// One request on a connection of its own, as a backend's client makes them: the relay
    /// closes a connection whose first request has not come within its request timeout (10 s),
    /// so none is kept across a test's steps.
    func execute(
        _ pathAndQuery: String,
        method: HTTPRequest.Method,
        headers: HTTPFields = [:],
        body: String? = nil
    ) async throws -> (status: HTTPResponse.Status, headers: HTTPFields, body: String) {
        let client = TestClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(30)))
        client.connect()
        do {
            let response = try await client.execute(.init(pathAndQuery, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }))
            try? await client.shutdown()
            return (response.status, response.headers, response.body.map { String(buffer: $0) } ?? "")
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    static func json(_ body: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
    }

    /// A WebSocket upgrade request sent as plain HTTP on a connection of its own (a refused
    /// upgrade closes its connection), to read a refusal's status and body.
    func upgrade(_ pathAndQuery: String, headers: HTTPFields = [:]) async throws -> (status: HTTPResponse.Status, detail: String?) {
        var all: HTTPFields = [
            .upgrade: "websocket", .connection: "Upgrade", .secWebSocketVersion: "13", .secWebSocketKey: "dGhlIHNhbXBsZSBub25jZQ==",
        ]
        all.append(contentsOf: headers)
        let request = all
        let response = try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
            try await client.get(pathAndQuery, headers: request)
        }
        let detail =
            (try? JSONSerialization.jsonObject(with: Data(String(buffer: response.body ?? ByteBuffer()).utf8)) as? [String: Any])?["detail"]
            as? String
        #expect(response.headers[.contentType] == "application/json; charset=utf-8")
        return (response.status, detail)
    }
}

/// Stands in for a TURN service that cannot be reached: the outside world failing, not our code.
struct UnreachableTURNService: TURNProvider {
    var name: String { "unreachable" }
    func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument {
        throw TURNError(.upstreamFailed, "upstream unreachable")
    }
}

/// Runs `body` with a fresh directory, removed afterwards.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relay-test-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}
