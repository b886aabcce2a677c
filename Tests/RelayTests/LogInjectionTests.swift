/// Client values in the text log are escaped: one event is one line.
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// Issue "The edge, third round", 2: what a client sends reaches the text log escaped, so no
/// request writes a line that looks like the relay's own.
@Suite(.timeLimit(.minutes(1))) struct LogInjectionTests {
    static let forged = "2026-01-01T00:00:00.000Z notice relay : [Relay] FORGED"

    @Test func aUserIDACloseReasonAndAnAdminPathHoldingLineBreaksStayOnTheirEventsLine() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let secret = try await RelayStore(path: path).addDevice("robot-7", owners: ["alice"]).secret
            let admin = String(repeating: "a", count: 32)
            let environment = [
                "RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DB": path,
                "RELAY_ADMIN_TOKEN": admin, "RELAY_LOG_LEVEL": "debug",
            ]
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-7", secret: secret)
            let app = try await client.app("mallory\n\(Self.forged) by sub\r\u{1B}[2J", devices: ["robot-7"])
            let session = try await client.openSession(app: app, device: device, deviceID: "robot-7")
            try app.send(["type": "webrtc_close", "session_id": session, "reason": "bye\n\(Self.forged) by reason\u{2028}"])
            _ = try await device.next("webrtc_close")
            let http = HTTPClient(port: relay.port)
            _ = try await http.post("/admin/devices/robot-7%0A\(Self.forged.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)/revoke",
                headers: [.authorization: "Bearer \(admin)"], json: nil)
            await http.shutdown()

            let closed = try await eventually("the session's close in the log") {
                relay.recentLog.split(separator: "\n").first { $0.contains("Session closed") }
            }
            #expect(closed.contains(#"user.id="mallory\n2026-01-01T00:00:00.000Z notice relay : [Relay] FORGED by sub\r\u{1B}[2J""#), "\(closed)")
            #expect(closed.contains(#"session.reason="bye\n2026-01-01T00:00:00.000Z notice relay : [Relay] FORGED by reason\u{2028}""#), "\(closed)")
            // Every line is one of the relay's events: none begins with the forged time, and
            // none holds a raw control character.
            let lines = relay.recentLog.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            #expect(!lines.contains { $0.hasPrefix("2026-01-01") }, "\(relay.recentLog)")
            #expect(!relay.recentLog.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\n") || $0.value == 0x2028 })
        }
    }
}
