/// What an operator sees of the running relay: its version everywhere, and JSON logs.
import DeviceAuth
import Foundation
import Relay
import RelayTestSupport
import Testing

@Suite(.timeLimit(.minutes(2)))
struct OperatorTests {
    static let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey]

    /// One HTTP GET on a fresh connection: the answer's body.
    static func get(_ path: String, port: Int) async throws -> String {
        try await onOwnThread {
            try RawConnection.open(port: port).exchange("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").body
        }
    }

    @Test func theVersionAndRevisionAreTheSameInTheCommandTheLogHealthAndMetrics() async throws {
        let version = try await CommandLineTests.relay(["--version"])
        #expect(version.status == 0)
        let line = version.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // relay 1.1.0 (3f2a9c1d0b7e), the revision `-dirty` when built with uncommitted changes.
        let match = try #require(line.wholeMatch(of: /relay (\d+\.\d+\.\d+) \(([0-9a-f]{12}(-dirty)?|unknown)\)/))
        let (number, revision) = (String(match.1), String(match.2))
        #expect(number == RelayBuild.version && revision == RelayBuild.revision)

        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: Self.environment)
        defer { relay.kill() }
        let health = try JSONSerialization.jsonObject(with: Data(try await Self.get("/healthz", port: relay.port).utf8)) as? [String: Any]
        #expect(health?["version"] as? String == number && health?["revision"] as? String == revision)
        let metrics = try await Self.get("/metrics", port: relay.port)
        #expect(metrics.contains("relay_build_info{version=\"\(number)\",revision=\"\(revision)\"} 1"))
        #expect(relay.recentLog.contains("Relay \(number) starting"))
        #expect(relay.recentLog.contains("relay.revision=\(revision)"))
    }

    @Test func jsonLogsAreOneObjectPerLineWithTheSameMetadataKeys() async throws {
        let relay = try await RelayProcess.start(
            binary: CommandLineTests.relayBinary,
            environment: Self.environment.merging(["RELAY_LOG_FORMAT": "json", "RELAY_LOG_LEVEL": "debug"]) { $1 }
        )
        defer { relay.kill() }
        let client = ProcessClient(port: relay.port)
        let device = try await client.device("robot-1", secret: DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey))
        let app = try await client.app("alice", devices: ["robot-1"])
        let session = try await ProcessClient.session(app: app, device: device)
        try app.send(["type": "webrtc_close", "session_id": session.id, "reason": "normal"])
        _ = try await device.next("webrtc_close")
        // The relay logs the session's end; then every line it wrote parses.
        _ = try await eventually("the session's end is logged") { relay.recentLog.contains("Session closed") ? true : nil }
        let lines = relay.recentLog.split(separator: "\n")
        var objects: [[String: Any]] = []
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
            objects.append(object)
        }
        for object in objects {
            #expect(object["time"] is String && object["level"] is String && object["message"] is String && object["label"] as? String == "relay")
        }
        let start = try #require(objects.first { ($0["message"] as? String)?.hasPrefix("Relay ") == true })
        #expect(start["relay.version"] as? String == RelayBuild.version && start["level"] as? String == "notice")
        let closed = try #require(objects.first { $0["message"] as? String == "Session closed" })
        #expect(closed["session.id"] as? String == session.id && closed["user.id"] as? String == "alice")
        #expect(objects.contains { $0["message"] as? String == "Link attached" && $0["link.party"] as? String == "device" })
    }

    @Test func systemdHearsReadyOnceTheRelayListensAndStoppingWhenItDrains() async throws {
        // What systemd does for a Type=notify unit: a datagram socket, named in NOTIFY_SOCKET.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString.prefix(8))").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let receive = { @Sendable [fd] () throws -> String in
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { throw NothingReceived(errno: errno) }
            return String(decoding: buffer[..<count], as: UTF8.self)
        }
        let relay = try await RelayProcess.start(
            binary: CommandLineTests.relayBinary,
            environment: Self.environment.merging(["NOTIFY_SOCKET": path, "RELAY_SHUTDOWN_DRAIN_S": "0"]) { $1 }
        )
        defer { relay.kill() }
        #expect(try await onOwnThread(receive) == "READY=1\nSTATUS=listening")
        // Ready means listening: a request is answered.
        #expect(try await Self.get("/healthz", port: relay.port).contains("\"status\":\"ok\""))
        kill(relay.process.processIdentifier, SIGTERM)
        #expect(try await onOwnThread(receive) == "STOPPING=1\nSTATUS=draining")
        #expect(try await relay.process.exited() == 0)
    }

    @Test func anUnknownLogFormatStopsStartUp() async throws {
        let run = try await CommandLineTests.relay(["serve"], environment: Self.environment.merging(["RELAY_LOG_FORMAT": "xml"]) { $1 })
        #expect(run.status == 78)
        #expect(run.stderr.contains("RELAY_LOG_FORMAT: 'xml' is not one of text, json"))
    }
}

struct NothingReceived: Error {
    var errno: Int32
}
