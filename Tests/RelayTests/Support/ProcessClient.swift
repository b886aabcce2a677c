/// Clients of a relay started as a process: a registered device, an app user, sessions between them, resumes.
import DeviceAuth
import Foundation
import HTTPTypes
import RelayTestSupport
import Testing

/// Clients of a relay started as a process.
struct ProcessClient {
    let port: Int

    /// What a client resumes with: its link's token and the last `seq` it processed.
    struct Resume: Sendable {
        var token: String
        var lastSeq: Int

        /// From a link's `hello`, having processed up to `lastSeq`.
        init(_ hello: JSONObject, lastSeq: Int) throws {
            self.token = try #require(hello["resume_token"] as? String)
            self.lastSeq = lastSeq
        }

        var query: String { "resume_token=\(token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? token)&last_seq=\(lastSeq)" }
    }

    func device(_ deviceID: String, secret: String, resume: Resume? = nil) async throws -> TestSocket {
        try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/device?\(Self.signedQuery(deviceID, secret: secret))\(resume.map { "&" + $0.query } ?? "")")
    }

    /// A device's signed query, signed now with a fresh nonce.
    static func signedQuery(_ deviceID: String, secret: String) -> String {
        DeviceSignature.sign(deviceID: deviceID, timestamp: Int(Date().timeIntervalSince1970), nonce: DeviceSignature.makeNonce(), secret: secret).query
    }

    /// An app of `userID`; its token names `devices` (the registry decides when nil).
    func app(_ userID: String, devices: [String]? = nil, resume: Resume? = nil) async throws -> TestSocket {
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(
            userID: userID,
            devices: devices,
            now: Date().timeIntervalSince1970,
            lifetime: 600
        )
        return try await TestSocket.connect(
            "ws://127.0.0.1:\(port)/ws/app\(resume.map { "?" + $0.query } ?? "")",
            headers: [.authorization: "Bearer \(token)"]
        )
    }

    /// Opens a session; returns its id.
    func openSession(app: TestSocket, device: TestSocket, deviceID: String) async throws -> String {
        try await Self.session(app: app, device: device, deviceID: deviceID).id
    }

    /// A session `app` asked for and `device` was told of: its id, and the message each received.
    struct OpenedSession {
        var id: String
        var credentials: JSONObject
        var request: JSONObject
    }

    static func session(app: TestSocket, device: TestSocket, deviceID: String = "robot-1") async throws -> OpenedSession {
        try app.send(["type": "webrtc_request", "device_id": deviceID])
        let credentials = try await app.next("webrtc_credentials")
        let request = try await device.next("webrtc_request")
        return OpenedSession(id: try #require(credentials["session_id"] as? String), credentials: credentials, request: request)
    }
}
