/// SIGHUP never stops the relay (issue "The edge, third round", 1): it reloads what can be reloaded and says so in one line.
import DeviceAuth
import Foundation
import HTTPTypes
import OpenSSLCrypto
import Registry
import RelayTestSupport
import Testing

@Suite(.timeLimit(.minutes(1))) struct HangupTests {
    /// The relay's log lines holding `text`.
    static func lines(_ text: String, in relay: RelayProcess) -> [Substring] {
        relay.recentLog.split(separator: "\n").filter { $0.contains(text) }
    }

    /// What logrotate's `postrotate`, a closed terminal or a supervisor sends, with no TLS
    /// configured: the relay stays, the call goes on, and each hangup is one line.
    @Test func aHangupWithNothingToReloadLeavesTheRelayAndItsCallsAsTheyWere() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let secret = try await RelayStore(path: path).addDevice("robot-7", owners: ["alice"]).secret
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DB": path]
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-7", secret: secret)
            let app = try await client.app("alice")
            let session = try await client.openSession(app: app, device: device, deviceID: "robot-7")
            for hangup in 1...2 {
                kill(relay.process.processIdentifier, SIGHUP)
                _ = try await eventually("hangup \(hangup) in the log") {
                    Self.lines("SIGHUP", in: relay).count == hangup ? true : nil
                }
            }
            #expect(Self.lines("SIGHUP", in: relay).allSatisfy { $0.contains("SIGHUP: nothing to reload") }, "\(relay.recentLog)")
            #expect(relay.process.isRunning)
            try app.send(["type": "webrtc_ice", "session_id": session, "candidate": ["candidate": "candidate:1 1 udp 1 192.0.2.1 1 typ host"]])
            _ = try await device.next("webrtc_ice")
            try await device.expectNothingPending()
        }
    }

    /// A rotated app-token key file is read again on SIGHUP: tokens signed with the new key
    /// are accepted from then on, those of the old one no longer; a file that cannot be read
    /// keeps the keys there were.
    @Test func aHangupReadsTheAppTokenKeyFilesAgain() async throws {
        try await withTemporaryDirectory { directory in
            for name in ["old", "new"] {
                try Self.openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "\(directory)/\(name).key"])
                try Self.openssl(["ec", "-in", "\(directory)/\(name).key", "-pubout", "-out", "\(directory)/\(name).pub"])
            }
            let keyFile = "\(directory)/app-tokens.pub"
            try FileManager.default.copyItem(atPath: "\(directory)/old.pub", toPath: keyFile)
            let environment = [
                "RELAY_JWT_ALGORITHMS": "ES256", "RELAY_JWT_PUBLIC_KEY_FILE": keyFile, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey,
            ]
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let old = try Self.token(signedWith: "\(directory)/old.key")
            let new = try Self.token(signedWith: "\(directory)/new.key")
            #expect(try await Self.credentialsStatus(port: relay.port, token: old) == .ok)
            #expect(try await Self.credentialsStatus(port: relay.port, token: new) == .unauthorized)

            try FileManager.default.removeItem(atPath: keyFile)
            try FileManager.default.copyItem(atPath: "\(directory)/new.pub", toPath: keyFile)
            kill(relay.process.processIdentifier, SIGHUP)
            let reloaded = try await eventually("the reload in the log") { Self.lines("SIGHUP", in: relay).first }
            #expect(reloaded.contains("SIGHUP: reloaded 1 app-token key(s) from files"), "\(reloaded)")
            #expect(try await Self.credentialsStatus(port: relay.port, token: new) == .ok)
            #expect(try await Self.credentialsStatus(port: relay.port, token: old) == .unauthorized)

            // A key file gone: said so, and the keys stay.
            try FileManager.default.removeItem(atPath: keyFile)
            kill(relay.process.processIdentifier, SIGHUP)
            let failed = try await eventually("the failed reload in the log") { Self.lines("SIGHUP", in: relay).dropFirst().first }
            #expect(failed.contains("could not reload") && failed.contains("cannot read '\(keyFile)'"), "\(failed)")
            #expect(try await Self.credentialsStatus(port: relay.port, token: new) == .ok)
            #expect(relay.process.isRunning)
        }
    }

    static func openssl(_ arguments: [String]) throws {
        let process = try ChildProcess.run("/usr/bin/openssl", arguments, environment: [:])
        #expect(process.waitUntilExit() == 0, "openssl \(arguments.joined(separator: " "))")
    }

    /// An ES256 app token for alice, signed with the private key at `path`.
    static func token(signedWith path: String) throws -> String {
        let header = Base64URL.encode(Array(#"{"alg":"ES256","typ":"JWT"}"#.utf8))
        let now = Int(Date().timeIntervalSince1970)
        let claims = Base64URL.encode(Array(#"{"sub":"alice","iat":\#(now),"exp":\#(now + 600)}"#.utf8))
        let pem = try String(contentsOfFile: path, encoding: .utf8)
        let signature = try #require(LibCrypto.signECDSA(.sha256, privateKeyPEM: pem, message: "\(header).\(claims)".utf8))
        return "\(header).\(claims).\(Base64URL.encode(signature))"
    }

    /// The status of `POST /api/turn/credentials` with `token`.
    static func credentialsStatus(port: Int, token: String) async throws -> HTTPResponse.Status {
        let http = HTTPClient(port: port)
        let answer = try await http.post("/api/turn/credentials", headers: [.authorization: "Bearer \(token)"], json: [:])
        await http.shutdown()
        return answer.status
    }
}
