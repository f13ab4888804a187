// SPDX-License-Identifier: GPL-2.0-or-later
#include "isolator.h"

#include <QDBusArgument>
#include <QDBusError>
#include <QDBusMetaType>
#include <QDBusObjectPath>
#include <QDBusPendingCall>
#include <QDBusPendingCallWatcher>
#include <QDBusServiceWatcher>
#include <QDBusSignature>
#include <QDBusUnixFileDescriptor>
#include <QDBusVariant>
#include <QStringList>

namespace {

const QString BusName = QStringLiteral("org.kvmisolate.Isolator1");
const QString ObjectPath = QStringLiteral("/org/kvmisolate/Isolator1");
const QString Interface = QStringLiteral("org.kvmisolate.Isolator1");
const QString PropertiesInterface = QStringLiteral("org.freedesktop.DBus.Properties");
const QString ObjectManagerInterface = QStringLiteral("org.freedesktop.DBus.ObjectManager");
const QString DBusName = QStringLiteral("org.freedesktop.DBus");
const QString DBusPath = QStringLiteral("/org/freedesktop/DBus");

// Reads of the state; the service answers at once or not at all.
constexpr int ReadTimeoutMs = 10000;
// Actions: polkit may ask the user (kvmisolated waits 120 s for an interactive check).
constexpr int ActionTimeoutMs = 150000;
// Signals come in bursts (an isolation: InterfacesAdded and several PropertiesChanged):
// one Status() read for a burst.
constexpr int DebounceMs = 20;

QVariant fromArgument(const QDBusArgument &arg);

// Reads the elements up to the end of the current container.
QVariantList readElements(const QDBusArgument &arg)
{
    QVariantList out;
    while (!arg.atEnd()) {
        if (arg.currentType() == QDBusArgument::UnknownType)
            break;
        out << fromArgument(arg);
    }
    return out;
}

QVariant fromArgument(const QDBusArgument &arg)
{
    switch (arg.currentType()) {
    case QDBusArgument::BasicType:
        return Isolator::plain(arg.asVariant());
    case QDBusArgument::VariantType: {
        QDBusVariant inner;
        arg >> inner;
        return Isolator::plain(inner.variant());
    }
    case QDBusArgument::ArrayType: {
        arg.beginArray();
        const QVariantList out = readElements(arg);
        arg.endArray();
        return out;
    }
    case QDBusArgument::StructureType: {
        arg.beginStructure();
        const QVariantList out = readElements(arg);
        arg.endStructure();
        return out;
    }
    case QDBusArgument::MapType: {
        QVariantMap out;
        arg.beginMap();
        while (!arg.atEnd()) {
            if (arg.currentType() != QDBusArgument::MapEntryType)
                break;
            arg.beginMapEntry();
            const QVariant key = fromArgument(arg);
            const QVariant value = fromArgument(arg);
            arg.endMapEntry();
            out.insert(key.toString(), value);
        }
        arg.endMap();
        return out;
    }
    case QDBusArgument::MapEntryType:
    case QDBusArgument::UnknownType:
        break;
    }
    return {};
}

QString errorText(const QDBusMessage &reply)
{
    return reply.errorName() + QStringLiteral(": ") + reply.errorMessage();
}

} // namespace

QVariant Isolator::plain(const QVariant &value)
{
    const QMetaType type = value.metaType();
    if (type == QMetaType::fromType<QDBusArgument>())
        return fromArgument(value.value<QDBusArgument>());
    if (type == QMetaType::fromType<QDBusVariant>())
        return plain(value.value<QDBusVariant>().variant());
    if (type == QMetaType::fromType<QDBusObjectPath>())
        return value.value<QDBusObjectPath>().path();
    if (type == QMetaType::fromType<QDBusSignature>())
        return value.value<QDBusSignature>().signature();
    if (type == QMetaType::fromType<QDBusUnixFileDescriptor>())
        return {};
    if (type == QMetaType::fromType<QVariantList>()) {
        QVariantList out;
        const QVariantList in = value.toList();
        for (const QVariant &v : in)
            out << plain(v);
        return out;
    }
    if (type == QMetaType::fromType<QVariantMap>()) {
        QVariantMap out;
        const QVariantMap in = value.toMap();
        for (auto it = in.cbegin(); it != in.cend(); ++it)
            out.insert(it.key(), plain(it.value()));
        return out;
    }
    return value;
}

Isolator::Isolator(QObject *parent)
    : QObject(parent)
    , m_bus(QDBusConnection::systemBus())
{
    m_debounce.setSingleShot(true);
    m_debounce.setInterval(DebounceMs);
    connect(&m_debounce, &QTimer::timeout, this, &Isolator::refresh);

    if (!m_bus.isConnected()) {
        m_lastError = QStringLiteral("cannot connect to the system bus: ") + m_bus.lastError().message();
        qWarning("kvmisolate: %s", qPrintable(m_lastError));
        return;
    }
    m_watcher = new QDBusServiceWatcher(BusName, m_bus, QDBusServiceWatcher::WatchForOwnerChange, this);
    connect(m_watcher, &QDBusServiceWatcher::serviceOwnerChanged, this, &Isolator::onOwnerChanged);
    subscribe();
    refresh();
}

void Isolator::subscribe()
{
    // An empty path: any object of the service (the manager and each isolation).
    bool ok = m_bus.connect(BusName, QString(), PropertiesInterface, QStringLiteral("PropertiesChanged"), this,
                            SLOT(onChanged(QDBusMessage)));
    ok = m_bus.connect(BusName, QString(), ObjectManagerInterface, QStringLiteral("InterfacesAdded"), this,
                       SLOT(onChanged(QDBusMessage)))
        && ok;
    ok = m_bus.connect(BusName, QString(), ObjectManagerInterface, QStringLiteral("InterfacesRemoved"), this,
                       SLOT(onChanged(QDBusMessage)))
        && ok;
    ok = m_bus.connect(BusName, ObjectPath, Interface, QStringLiteral("Released"), this,
                       SLOT(onReleased(QDBusMessage)))
        && ok;
    m_live = ok;
    if (!ok)
        qWarning("kvmisolate: cannot follow the service's signals: %s", qPrintable(m_bus.lastError().message()));
}

void Isolator::onOwnerChanged(const QString &, const QString &, const QString &newOwner)
{
    // The absent state at once (the refresh confirms it with NameHasOwner).
    if (newOwner.isEmpty() && m_available) {
        m_available = false;
        m_statusKnown = false;
        m_status.clear();
        m_presets.clear();
        Q_EMIT availableChanged();
        Q_EMIT statusChanged();
    }
    refresh();
}

void Isolator::onChanged(const QDBusMessage &)
{
    m_debounce.start();
}

void Isolator::onReleased(const QDBusMessage &message)
{
    const QVariantList args = message.arguments();
    if (args.size() >= 3)
        Q_EMIT released(plain(args.at(0)).toString(), plain(args.at(1)).toString(), plain(args.at(2)).toString());
    m_debounce.start();
}

void Isolator::send(const QDBusMessage &message, quint64 generation,
                    void (Isolator::*handle)(const QDBusMessage &))
{
    auto *watcher = new QDBusPendingCallWatcher(m_bus.asyncCall(message, ReadTimeoutMs), this);
    connect(watcher, &QDBusPendingCallWatcher::finished, this,
            [this, generation, handle](QDBusPendingCallWatcher *w) {
                w->deleteLater();
                if (generation != m_generation)
                    return;
                (this->*handle)(w->reply());
                if (--m_pending == 0)
                    apply();
            });
}

void Isolator::refresh()
{
    m_debounce.stop();
    if (!m_bus.isConnected())
        return;
    const quint64 generation = ++m_generation;
    m_pending = 4;
    m_nextStatus.clear();
    m_nextPresets.clear();
    m_nextKnown = false;
    m_nextError.clear();
    m_nextAvailable = false;
    m_nextActivatable = m_activatable;

    send(QDBusMessage::createMethodCall(DBusName, DBusPath, DBusName, QStringLiteral("NameHasOwner"))
             << BusName,
         generation, &Isolator::onNameHasOwner);
    send(QDBusMessage::createMethodCall(DBusName, DBusPath, DBusName, QStringLiteral("ListActivatableNames")),
         generation, &Isolator::onActivatable);
    // Reading never starts the service (it exits when idle; a read should not wake it).
    QDBusMessage status = QDBusMessage::createMethodCall(BusName, ObjectPath, Interface, QStringLiteral("Status"));
    status.setAutoStartService(false);
    send(status, generation, &Isolator::onStatus);
    QDBusMessage presets = QDBusMessage::createMethodCall(BusName, ObjectPath, PropertiesInterface, QStringLiteral("Get"))
        << Interface << QStringLiteral("Presets");
    presets.setAutoStartService(false);
    send(presets, generation, &Isolator::onPresets);
}

void Isolator::onNameHasOwner(const QDBusMessage &reply)
{
    if (reply.type() == QDBusMessage::ReplyMessage && !reply.arguments().isEmpty())
        m_nextAvailable = reply.arguments().constFirst().toBool();
}

void Isolator::onActivatable(const QDBusMessage &reply)
{
    if (reply.type() == QDBusMessage::ReplyMessage && !reply.arguments().isEmpty())
        m_nextActivatable = plain(reply.arguments().constFirst()).toStringList().contains(BusName);
}

void Isolator::onStatus(const QDBusMessage &reply)
{
    if (reply.type() != QDBusMessage::ReplyMessage) {
        m_nextError = errorText(reply);
        return;
    }
    if (reply.arguments().isEmpty()) {
        m_nextError = QStringLiteral("Status() returned nothing");
        return;
    }
    m_nextStatus = plain(reply.arguments().constFirst()).toMap();
    m_nextKnown = true;
}

void Isolator::onPresets(const QDBusMessage &reply)
{
    if (reply.type() == QDBusMessage::ReplyMessage && !reply.arguments().isEmpty())
        m_nextPresets = plain(reply.arguments().constFirst()).toList();
}

void Isolator::apply()
{
    const bool availableChanged_ = m_available != m_nextAvailable;
    const bool activatableChanged_ = m_activatable != m_nextActivatable;
    m_available = m_nextAvailable;
    m_activatable = m_nextActivatable;
    m_statusKnown = m_available && m_nextKnown;
    m_status = m_statusKnown ? m_nextStatus : QVariantMap();
    m_presets = m_available ? m_nextPresets : QVariantList();
    m_lastError = m_available ? m_nextError : QString();
    ++m_refreshes;
    if (activatableChanged_)
        Q_EMIT activatableChanged();
    if (availableChanged_)
        Q_EMIT availableChanged();
    Q_EMIT statusChanged();
}

void Isolator::act(const QString &member, const QVariantList &args, const QString &tag)
{
    QDBusMessage message = QDBusMessage::createMethodCall(BusName, ObjectPath, Interface, member);
    message.setArguments(args);
    // The point of this module: polkit may ask the user through the session's agent.
    message.setInteractiveAuthorizationAllowed(true);
    auto *watcher = new QDBusPendingCallWatcher(m_bus.asyncCall(message, ActionTimeoutMs), this);
    connect(watcher, &QDBusPendingCallWatcher::finished, this, [this, tag](QDBusPendingCallWatcher *w) {
        w->deleteLater();
        if (w->isError()) {
            const QDBusError error = w->error();
            Q_EMIT finished(tag, false, error.name(), error.message());
        } else {
            Q_EMIT finished(tag, true, QString(), QString());
        }
        // The service's signals refresh the view; a failed call may change nothing, but
        // re-reading is cheap and covers a service that went away meanwhile.
        m_debounce.start();
    });
}

void Isolator::release(const QString &name, const QString &tag)
{
    act(QStringLiteral("Release"), {name}, tag);
}

void Isolator::releaseAll(const QString &tag)
{
    act(QStringLiteral("ReleaseAll"), {}, tag);
}

void Isolator::startPreset(const QString &name, const QString &tag)
{
    act(QStringLiteral("StartPreset"), {name}, tag);
}
