/// What the nodes of a fleet share beyond the live state: device links claimed fleet-wide, session reservations, messages between nodes, and the links of nodes that died.

/// A message for a link another node serves, as it travels through the store: the message as
/// its client gets it (without `seq`, which the receiving node assigns) and, for the few that
/// change a session, what the receiving node's copy of the session is to do first.
public struct RemoteDelivery: Sendable, Equatable {
    public var linkID: String
    public var type: String
    /// `{"type":"...",...` without its closing brace (`OutboundMessage.openBody`).
    public var openBody: String
    /// A session event (JSON), or nil for a message that only passes through.
    public var event: String?
    /// Its place in the order of the inbox it was read from (nil before it is written).
    public var seq: Int64?

    public init(linkID: String, type: String, openBody: String, event: String?, seq: Int64? = nil) {
        self.linkID = linkID
        self.type = type
        self.openBody = openBody
        self.event = event
        self.seq = seq
    }
}

/// Where a link lives in the fleet.
public struct FleetLink: Sendable, Equatable {
    public var linkID: String
    public var node: String

    public init(linkID: String, node: String) {
        self.linkID = linkID
        self.node = node
    }
}

/// A link as the fleet's directory has it: who, and which node serves it (and whether that
/// node still runs).
public struct FleetLinkRow: Sendable, Equatable {
    public var linkID: String
    public var party: String
    public var principal: String
    /// The node serving it (nil: nobody yet).
    public var owner: String?
    /// That node runs (serving or draining); false once it stopped or was declared dead.
    public var ownerRuns: Bool
    /// Counts the link's moves between nodes: a request for it names the move it saw.
    public var epoch: Int64

    public init(linkID: String, party: String, principal: String, owner: String?, ownerRuns: Bool, epoch: Int64 = 0) {
        self.linkID = linkID
        self.party = party
        self.principal = principal
        self.owner = owner
        self.ownerRuns = ownerRuns
        self.epoch = epoch
    }
}

/// A link a node hands to another (its client resumed there): its row, what it keeps for its
/// client, and the sessions whose timers the node kept.
public struct LinkHandover: Sendable {
    public var link: StoredLink
    public var messages: [StoredMessage]
    public var sessions: [StoredSession]

    public init(link: StoredLink, messages: [StoredMessage], sessions: [StoredSession]) {
        self.link = link
        self.messages = messages
        self.sessions = sessions
    }
}

/// A device's presence across the fleet (contract §8): online when its live link has a
/// transport, its open sessions, and what it last said of itself (`device_info`, JSON).
public struct FleetPresence: Sendable, Equatable {
    public var online: Bool
    public var sessions: Int
    public var capabilities: String?

    public init(online: Bool, sessions: Int, capabilities: String?) {
        self.online = online
        self.sessions = sessions
        self.capabilities = capabilities
    }
}

/// A session as the fleet's store has it, for operators.
public struct FleetSession: Sendable, Equatable {
    public var id: String
    public var userID: String
    public var deviceID: String
    public var deviceLink: String
    public var createdAt: Double
    public var opened: Bool
    public var answered: Bool

    public init(id: String, userID: String, deviceID: String, deviceLink: String, createdAt: Double, opened: Bool, answered: Bool) {
        self.id = id
        self.userID = userID
        self.deviceID = deviceID
        self.deviceLink = deviceLink
        self.createdAt = createdAt
        self.opened = opened
        self.answered = answered
    }
}

/// A session reservation's outcome across the fleet (contract §3.1's checks, in order).
public enum FleetReservation: Sendable, Equatable {
    /// Reserved: the device's live link, and the node serving it.
    case reserved(device: FleetLink)
    case deviceOffline
    case deviceBusy
    case appLimit
}

/// The store the nodes of a fleet share (PostgreSQL). Every method is one transaction.
public protocol FleetStore: Sendable {
    /// This node.
    var node: String { get }
    /// The fleet declared this node dead (it was paused or cut off) and took its links: it
    /// writes nothing more and is to stop at once.
    var isFenced: Bool { get }
    /// Makes `link` (a device's, served by this node) the device's one live link across the
    /// fleet (contract §4's replace rule); the link it replaces, if any. A replaced link served
    /// by another node is told so through that node's inbox.
    func claimDevice(_ link: StoredLink) async throws(StoreError) -> FleetLink?
    /// Takes a token from the bucket `key` shares across the fleet (`capacity`, refilled at
    /// `perSecond`): nil when taken, else the seconds until one is back.
    func takeQuota(_ key: String, capacity: Int, perSecond: Double) async throws(StoreError) -> Int?
    /// Writes the row of a fresh app link this node serves, before its client hears `hello`
    /// (its next request may land on another node, which must find it).
    func registerLink(_ link: StoredLink) async throws(StoreError)
    /// Reserves session `id` between the app link `app` (served by this node; its row is
    /// written if it is not yet) and the live link of `deviceID`, within the limits.
    func reserveSession(_ id: String, app: StoredLink, deviceID: String, createdAt: Double, maxPerDevice: Int, maxPerApp: Int)
        async throws(StoreError) -> FleetReservation
    /// Forgets a reserved session that will not open (its row counted against the limits).
    func forgetSession(_ id: String) async throws(StoreError)
    /// Queues messages for links other nodes serve (each goes to whichever node serves its link
    /// when it is written) and rings those nodes.
    func send(_ deliveries: [RemoteDelivery]) async throws(StoreError)
    /// Reclaims the space of messages taken (a queue read from its head slows down with every
    /// row deleted and not yet reclaimed: autovacuum comes by once a minute at most).
    func tidyInbox() async throws(StoreError)
    /// Takes up to `limit` of the messages queued for this node's links that it has not taken
    /// yet, in the order they were queued. They stay in the store, taken, until the live-state
    /// write that holds what they caused deletes them (`LiveStateBatch.inboxDone`): a node
    /// killed before that leaves them to the node that takes its links over.
    func takeInbox(limit: Int) async throws(StoreError) -> [RemoteDelivery]
    /// Makes messages this node took more than `age` ago and never deleted takeable again: a
    /// take whose answer was lost (a call given up on a hung connection) marked them taken but
    /// delivered nothing. Returns how many.
    func releaseStaleInbox(after age: Duration) async throws(StoreError) -> Int
    /// The link whose resume token hashes to `tokenHash`, or with id `linkID`.
    func link(tokenHash: [UInt8]) async throws(StoreError) -> FleetLinkRow?
    func link(id linkID: String) async throws(StoreError) -> FleetLinkRow?
    /// Asks `owner` (through its inbox) to hand `linkID` over to this node, as it was at
    /// `epoch` (a request that comes after the link moved on is stale).
    func requestHandover(of linkID: String, from owner: String, epoch: Int64) async throws(StoreError)
    /// Hands a link of this node to `node`: its row, kept messages and sessions as given, the
    /// messages queued for it here not yet taken, and `carried` (taken from this node's inbox
    /// but not delivered: they go on in their places); false when the link is no longer this
    /// node's.
    func handOver(_ handover: LinkHandover, carrying carried: [RemoteDelivery], to node: String) async throws(StoreError) -> Bool
    /// A link this node serves now (handed over to it), with what it keeps and its sessions.
    func liveState(ofLink linkID: String) async throws(StoreError) -> StoredLiveState?
    /// The presence of each of `deviceIDs`.
    func presence(of deviceIDs: [String]) async throws(StoreError) -> [String: FleetPresence]
    /// Records what the device on `linkID` said of itself (and tells the fleet).
    func describe(deviceID: String, linkID: String, capabilities: String) async throws(StoreError)
    /// Every session not yet closed, or the one with `id`.
    func sessions(id: String?) async throws(StoreError) -> [FleetSession]
    /// Queues `delivery` for whichever node serves its link (an operator's request to end a
    /// session held elsewhere).
    func request(_ delivery: RemoteDelivery) async throws(StoreError)
    /// Declares dead the nodes that stopped or stopped answering, and takes their links (and
    /// the messages queued for them) and the sessions those links take part in over.
    func takeOverStoppedNodes() async throws(StoreError) -> StoredLiveState
}
